// Rota's dashboard: a single page on hash routes (#/fleet, #/deployments/ID, #/robots/ID, ...).
// Everything comes from rota-server under /ui; no library, no CDN. Data is put into the page
// with textContent only (never innerHTML), so a robot id or a release branch cannot inject
// markup. The server enforces roles and CSRF; the page only hides what a role cannot use.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const ROLE_RANK = { viewer: 0, deployer: 1, admin: 2 };
const UPDATING = new Set(["downloading", "installing", "installed", "rebooting", "trial"]);
const FAILED = new Set(["failed", "rolled_back"]);
const TOOK_RELEASE = new Set(["committed", "trial", "installed", "rebooting"]);

let session = null; // {key_id, name, role, csrf_token}
let current = null; // the shown view: {refresh()}
let events = null; // EventSource
let refreshing = null;
let refreshAgain = false;

// ---------- small DOM helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const $ = (selector) => document.querySelector(selector);

function can(role) {
  return session && ROLE_RANK[session.role] >= ROLE_RANK[role];
}

function flash(text, kind) {
  const box = $("#flash");
  box.className = "flash " + (kind || "ok");
  box.textContent = text;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.textContent = ""; box.className = "flash"; }, 8000);
}

// ---------- formatting ----------

function ago(iso) {
  if (!iso) return "never";
  const secs = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (secs < 60) return secs + " s ago";
  if (secs < 3600) return Math.floor(secs / 60) + " min ago";
  if (secs < 86400) return Math.floor(secs / 3600) + " h ago";
  return Math.floor(secs / 86400) + " d ago";
}

function timeEl(iso) {
  if (!iso) return el("span", { class: "muted" }, "never");
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString(), "data-ago": "" }, ago(iso));
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function words(text) {
  return String(text || "").replace(/_/g, " ");
}

function robotStateText(robot) {
  if (robot.state === "downloading" && robot.progress != null) return "downloading " + robot.progress + "%";
  if (robot.state === "trial") return "in trial";
  return words(robot.state);
}

function badge(text, tone) {
  return el("span", { class: "badge " + (tone || toneOf(text)) }, words(text));
}

function toneOf(state) {
  if (["committed", "succeeded", "idle", "good"].includes(state)) return "good";
  if (["failed", "rolled_back", "halted", "bad", "aborted", "no_robot_updated"].includes(state)) return "bad";
  if (["paused", "awaiting_approval", "pending_approval", "waiting", "skipped", "superseded", "cancelled"].includes(state)) return "warn";
  return "busy";
}

function failureThreshold(strategy) {
  return strategy && strategy.max_failures !== undefined ? String(strategy.max_failures) : null;
}

function failures(counts) {
  return (counts.rolled_back || 0) + (counts.failed || 0);
}

function total(counts) {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

function strategyText(strategy) {
  switch (strategy.kind) {
    case "staged": return "staged " + strategy.percents.join("→") + "%" + (strategy.wait_secs ? ", " + strategy.wait_secs + " s between" : "");
    case "canary": return "canary " + (strategy.group ? "group " + strategy.group : strategy.count + " robots") +
      (strategy.wait_secs != null ? ", rest after " + strategy.wait_secs + " s" : ", rest on approval");
    default: return "immediate";
  }
}

function progressBar(done, all, label) {
  const percent = all ? Math.round((100 * done) / all) : 0;
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": all, "aria-valuenow": done, "aria-label": label });
  const fill = el("div", { class: "fill" });
  fill.style.width = percent + "%";
  bar.append(fill);
  return bar;
}

// ---------- server calls ----------

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.reason) || "HTTP " + status);
    this.status = status;
  }
}

async function call(method, path, body, bearer) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = "Bearer " + bearer;
  if (method !== "GET") headers["X-CSRF-Token"] = session ? session.csrf_token : "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== "/ui/login") {
    showLogin("Your session ended; log in again.");
  }
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

const api = (path) => call("GET", "/ui/api" + path);
const act = (path, body) => call("POST", "/ui/api" + path, body === undefined ? {} : body);

// ---------- login ----------

function showLogin(message) {
  session = null;
  if (events) { events.close(); events = null; }
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#api-key").focus();
}

async function startApp(info) {
  session = info;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#who").textContent = info.name + " (" + info.role + ")";
  document.body.dataset.role = info.role;
  connectEvents();
  await route();
}

async function login(event) {
  event.preventDefault();
  const input = $("#api-key");
  try {
    const info = await call("POST", "/ui/login", undefined, input.value.trim());
    input.value = "";
    if (!location.hash) location.hash = "#/fleet";
    await startApp(info);
  } catch (err) {
    $("#login-error").textContent = "Login refused: " + err.message;
  }
}

async function logout() {
  try { await call("POST", "/ui/logout"); } catch (err) { /* the session is gone either way */ }
  showLogin("Logged out.");
}

// ---------- live updates ----------

function connectEvents() {
  if (events) events.close();
  events = new EventSource("/ui/events");
  const live = $("#live");
  events.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  events.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
  events.addEventListener("change", () => {
    document.body.dataset.changes = String(Number(document.body.dataset.changes || 0) + 1);
    refresh();
  });
}

// Reloads the shown view's data. A change or a page switch arriving meanwhile makes the loop
// run once more, for whatever view is shown by then.
async function refresh() {
  if (!current) return;
  if (refreshing) { refreshAgain = true; return refreshing; }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      try {
        await current.refresh();
      } catch (err) {
        if (err.status !== 401) flash("Could not load: " + err.message, "bad");
      }
    } while (refreshAgain && current);
  })();
  try { await refreshing; } finally { refreshing = null; }
}

setInterval(() => {
  for (const node of document.querySelectorAll("time[data-ago]")) node.textContent = ago(node.getAttribute("datetime"));
}, 5000);

// ---------- routing ----------

const VIEWS = {
  fleet: fleetOverview,
  deployments: deploymentsView,
  deployment: deploymentView,
  robot: robotView,
  releases: releasesView,
  audit: auditView,
  notifications: notificationsView,
  charts: chartsView,
};

async function route() {
  if (!session) return;
  const parts = (location.hash.replace(/^#\/?/, "") || "fleet").split("/").map(decodeURIComponent);
  let name = parts[0];
  if (name === "deployments" && parts[1]) name = "deployment";
  if (name === "robots" && parts[1]) name = "robot";
  const make = VIEWS[name] || fleetOverview;
  for (const link of document.querySelectorAll("[data-nav]")) {
    const active = link.dataset.nav === parts[0];
    if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const main = $("#main");
  const hash = location.hash;
  main.replaceChildren();
  delete main.dataset.route;
  current = make(main, parts[1]);
  await refresh();
  // Marks the page as showing this route's data (a test waits for it; the hash alone changes
  // before the view does).
  if (location.hash === hash) main.dataset.route = hash;
}

// ---------- tables ----------

function table(caption, headings, rows, empty) {
  if (!rows.length) return el("p", { class: "muted empty" }, empty || "Nothing yet.");
  return el("div", { class: "table-wrap" },
    el("table", {},
      el("caption", { class: "sr-only" }, caption),
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((cell, i) => el("td", { "data-label": headings[i] }, cell)))))));
}

function section(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, title), children);
}

// ---------- fleet ----------

function environmentOf(robot, environments) {
  const env = environments.find((e) => e.groups.some((g) => robot.groups.includes(g)));
  return env ? env.name : "";
}

function slotText(robot) {
  if (!robot.slots) return "";
  const other = robot.slots.slots.find((s) => s.slot !== robot.slots.booted);
  return robot.slots.booted + (other && other.version ? " (other: " + other.version + ")" : "");
}

function fleetView(main) {
  const search = el("input", { type: "search", id: "fleet-search", placeholder: "id, group, version, environment", "aria-label": "Search robots" });
  const filter = el("select", { id: "fleet-filter", "aria-label": "Show robots" },
    ["all", "healthy", "updating", "failed", "pending approval"].map((v) => el("option", { value: v }, v)));
  const counts = el("div", { class: "counts", id: "fleet-counts" });
  const body = el("div");
  let robots = [], environments = [];
  main.append(el("h1", {}, "Fleet"), counts,
    el("div", { class: "toolbar" }, search, filter), body);

  function matches(robot) {
    const wanted = filter.value;
    if (wanted === "healthy" && robot.state !== "idle") return false;
    if (wanted === "updating" && !UPDATING.has(robot.state)) return false;
    if (wanted === "failed" && !FAILED.has(robot.state)) return false;
    if (wanted === "pending approval" && robot.state !== "pending_approval") return false;
    const text = search.value.trim().toLowerCase();
    if (!text) return true;
    const hay = [robot.id, robot.version, robot.state, environmentOf(robot, environments), ...robot.groups].join(" ").toLowerCase();
    return hay.includes(text);
  }

  function draw() {
    const count = (test) => robots.filter(test).length;
    counts.replaceChildren(
      stat("robots", robots.length), stat("healthy", count((r) => r.state === "idle"), "good"),
      stat("updating", count((r) => UPDATING.has(r.state)), "busy"), stat("failed", count((r) => FAILED.has(r.state)), "bad"));
    const shown = robots.filter(matches);
    body.replaceChildren(
      el("p", { class: "muted", id: "fleet-shown" }, shown.length + " of " + robots.length + " robots shown"),
      table("Robots", ["Robot", "Groups", "Environment", "Version", "Slot", "State", "Last seen"],
        shown.map((r) => [
          el("a", { href: "#/robots/" + encodeURIComponent(r.id) }, r.id),
          r.groups.join(", "), environmentOf(r, environments), r.version || "?", slotText(r),
          el("span", { class: "badge " + toneOf(r.state), "data-robot-state": r.id }, robotStateText(r)),
          timeEl(r.last_seen),
        ]), "No robots match."));
  }
  search.addEventListener("input", draw);
  filter.addEventListener("change", draw);
  return {
    async refresh() {
      [robots, environments] = await Promise.all([api("/robots"), api("/environments")]);
      draw();
    },
  };
}

const IN_PROGRESS = ["awaiting_approval", "running", "paused"];

/// The fleet page: rollouts in progress above the robots, so a person who opens the
/// dashboard sees what is changing and what waits for them without going to Deployments.
function fleetOverview(main) {
  const robots = fleetView(main);
  const rollouts = el("section", { class: "card rollouts", id: "fleet-rollouts", "aria-labelledby": "fleet-rollouts-title" });
  main.querySelector("#fleet-counts").after(rollouts);
  async function refreshRollouts() {
    const lists = await Promise.all(IN_PROGRESS.map((state) => api("/deployments?limit=100&state=" + state)));
    const open = lists.flat().sort((a, b) => b.created_at.localeCompare(a.created_at));
    rollouts.dataset.count = open.length;
    rollouts.replaceChildren(el("h2", { id: "fleet-rollouts-title" }, "Rollouts in progress"),
      open.length ? el("ul", { class: "rollout-list" }, open.map((d) =>
        el("li", { "data-rollout": d.id },
          el("div", { class: "stage-head" },
            el("span", {}, el("a", { href: "#/deployments/" + encodeURIComponent(d.id) }, releaseLabel(d) + " → " + d.target),
              " ", el("span", { class: "kind" }, d.kind), " ", stateBadges(d)),
            actionButtons(d, null, refresh, ["approve"])),
          progressLines(d)))) :
        el("p", { class: "muted" }, "No rollout in progress."));
  }
  return {
    async refresh() {
      await Promise.all([robots.refresh(), refreshRollouts()]);
    },
  };
}

function stat(label, value, tone) {
  return el("div", { class: "stat " + (tone || ""), "data-stat": label }, el("strong", {}, value), el("span", {}, label));
}

// ---------- deployments ----------

/// What a deployment or release carries: "2.0.0" for an OS release, "nav 1.4.0" for an app's.
function releaseLabel(d) {
  return (d.app ? d.app + " " : "") + d.version;
}

function verbsFor(deployment) {
  switch (deployment.state) {
    case "awaiting_approval": return ["approve", "abort"];
    case "running": return [...(deployment.stage_awaits_approval ? ["approve"] : []), "pause", "abort"];
    case "paused": return ["resume", "abort"];
    case "halted": case "failed": return ["retry"];
    default: return [];
  }
}

/// The server refuses an approval from the deployment's creator ("key:ID (name)" in
/// created_by); the page says so instead of offering a button that can only fail.
function createdBySelf(deployment) {
  return deployment.created_by.startsWith("key:" + session.key_id + " ");
}

/// What a person confirms before a verb that starts or stops robots' updates; null: no question.
function confirmation(verb, d) {
  if (verb === "abort") return "Abort deployment " + d.id + "?";
  if (verb !== "approve") return null;
  if (d.state === "awaiting_approval") return "Approve deployment " + d.id + "? " + releaseLabel(d) + " starts rolling out to " + d.target + ".";
  return "Approve deployment " + d.id + "? Stage " + (d.current_stage + 2) + " of " + d.stage_count + " starts: " +
    (d.counts.waiting || 0) + " more robot(s) get " + releaseLabel(d) + ".";
}

/// The deployment's buttons, for every page that shows one: the same verbs, confirmations and
/// role checks wherever it appears. `only` keeps a subset (the fleet overview offers approve).
function actionButtons(deployment, robots, after, only) {
  if (!can("deployer")) return null;
  const buttons = [];
  for (const verb of verbsFor(deployment).filter((v) => !only || only.includes(v))) {
    if (verb === "approve" && deployment.state === "awaiting_approval" && createdBySelf(deployment)) {
      buttons.push(el("span", { class: "muted", "data-approval-note": deployment.id }, "Another deployer must approve: you created it."));
      continue;
    }
    buttons.push(el("button", {
      type: "button", class: verb === "abort" ? "danger" : verb === "approve" ? "primary" : "", "data-action": verb,
      onclick: async (event) => {
        const question = confirmation(verb, deployment);
        if (question && !confirm(question)) return;
        event.target.disabled = true;
        try {
          await act("/deployments/" + encodeURIComponent(deployment.id) + "/" + verb);
          flash(verb + ": done for " + deployment.id);
        } catch (err) {
          flash(verb + " refused: " + err.message, "bad");
        }
        await after();
      },
    }, verb[0].toUpperCase() + verb.slice(1)));
  }
  if (!only && robots && robots.some((r) => TOOK_RELEASE.has(r.state))) {
    buttons.push(el("button", {
      type: "button", class: "danger", "data-action": "rollback",
      onclick: async () => {
        const ids = robots.filter((r) => TOOK_RELEASE.has(r.state)).map((r) => r.robot_id);
        const what = deployment.app ? deployment.app + " release" : "release";
        if (!confirm("Send " + ids.length + " robot(s) that took " + releaseLabel(deployment) + " back to their previous " + what + "?")) return;
        try {
          // An app deployment rolls back that app, never the OS the robots run.
          const outcome = await act("/rollbacks", { target: "robots:" + ids.join(","), immediate: true, ...(deployment.app ? { app: deployment.app } : {}) });
          const created = outcome.deployments.map((d) => d.id);
          flash("Rollback started: " + created.join(", "));
          if (created.length) location.hash = "#/deployments/" + encodeURIComponent(created[0]);
        } catch (err) {
          flash("Rollback refused: " + err.message, "bad");
        }
      },
    }, "Roll back"));
  }
  return buttons.length ? el("div", { class: "actions" }, buttons) : null;
}

function stateBadges(d) {
  return [badge(d.state), d.stage_awaits_approval ? [" ", el("span", { class: "badge warn", "data-awaits-approval": d.id }, "waits for approval")] : null];
}

/// Stage, counts and bar: how far a deployment got, as its page and the fleet overview show it.
function progressLines(d) {
  const all = total(d.counts);
  const committed = d.counts.committed || 0;
  const threshold = failureThreshold(d.strategy);
  const updating = ["pending", ...UPDATING].reduce((n, state) => n + (d.counts[state] || 0), 0);
  return [
    el("p", { class: "meta", "data-progress": d.id },
      el("span", { "data-stage": d.current_stage }, "Stage " + (d.current_stage + 1) + " of " + d.stage_count),
      " · ", committed + " of " + all + " committed",
      updating ? " · " + updating + " updating" : "",
      d.counts.waiting ? " · " + d.counts.waiting + " waiting" : "",
      " · ", el("span", { class: failures(d.counts) ? "bad-text" : "" },
        failures(d.counts) + " failed" + (threshold !== null ? " (halts past " + threshold + ")" : ""))),
    progressBar(committed, all, committed + " of " + all + " robots committed"),
  ];
}

function deploymentSummary(d) {
  return [
    el("p", { class: "meta" },
      stateBadges(d), " ", el("span", { class: "kind" }, d.kind), " · ", d.target, " · ", strategyText(d.strategy)),
    progressLines(d),
    d.halt_reason ? el("p", { class: "error halt" }, "Halted: " + d.halt_reason) : null,
  ];
}

function deploymentsView(main) {
  const body = el("div", { class: "timeline" });
  main.append(el("h1", {}, "Deployments"), body);
  const view = {
    async refresh() {
      const list = await api("/deployments?limit=100");
      body.replaceChildren(list.length ? el("ol", { class: "timeline-list" }, list.map((d) =>
        el("li", { class: "card deployment", "data-deployment": d.id },
          el("h2", {}, el("a", { href: "#/deployments/" + encodeURIComponent(d.id) }, releaseLabel(d) + " → " + d.target),
            el("span", { class: "muted small" }, " " + d.id)),
          el("p", { class: "muted small" }, "created " + when(d.created_at) + " by " + d.created_by),
          deploymentSummary(d),
          actionButtons(d, null, refresh)))) : el("p", { class: "muted empty" }, "No deployments yet."));
    },
  };
  return view;
}

function stageBars(d) {
  const stages = [];
  for (let s = 0; s < d.stage_count; s++) {
    const members = d.robots.filter((r) => r.stage === s);
    const committed = members.filter((r) => r.state === "committed").length;
    const failed = members.filter((r) => FAILED.has(r.state)).length;
    const status = s < d.current_stage ? "done" : s === d.current_stage ? "current" : "later";
    stages.push(el("li", { class: "stage " + status, "data-stage-index": s },
      el("div", { class: "stage-head" },
        el("strong", {}, "Stage " + (s + 1)),
        el("span", { class: "muted" }, members.length + " robots · " + committed + " committed" + (failed ? " · " + failed + " failed" : ""))),
      progressBar(committed, members.length, "stage " + (s + 1) + ": " + committed + " of " + members.length + " committed")));
  }
  return el("ol", { class: "stages" }, stages);
}

function deploymentView(main, id) {
  const body = el("div");
  main.append(el("p", {}, el("a", { href: "#/deployments" }, "← Deployments")), body);
  const view = {
    async refresh() {
      const d = await api("/deployments/" + encodeURIComponent(id));
      body.replaceChildren(
        el("h1", {}, "Deployment of " + releaseLabel(d), el("span", { class: "muted small" }, " " + d.id)),
        el("div", { class: "card", id: "deployment", "data-state": d.state, "data-current-stage": d.current_stage },
          el("p", { class: "muted small" }, "created " + when(d.created_at) + " by " + d.created_by +
            (d.approved_by ? " · approved by " + d.approved_by : "") + (d.environment ? " · environment " + d.environment : "") +
            (d.parent_id ? " · undoes " : "")),
          d.parent_id ? el("a", { href: "#/deployments/" + encodeURIComponent(d.parent_id) }, d.parent_id) : null,
          deploymentSummary(d),
          actionButtons(d, d.robots, refresh)),
        section("Stages", stageBars(d)),
        section("Robots", table("Robots in this deployment", ["Robot", "Stage", "State", "Detail", "Updated"],
          d.robots.map((r) => [
            el("a", { href: "#/robots/" + encodeURIComponent(r.robot_id) }, r.robot_id), r.stage + 1,
            el("span", { class: "badge " + toneOf(r.state), "data-assignment": r.robot_id }, words(r.state)),
            r.detail || "", timeEl(r.updated_at)]))),
        section("Decisions", table("Rollout log", ["When", "Who", "What", "Stage", "Detail"],
          (d.log || []).map((e) => [when(e.at), e.actor, words(e.action), e.stage != null ? e.stage + 1 : "", e.detail || ""]))));
    },
  };
  return view;
}

// ---------- robot ----------

function originText(origin) {
  switch (origin.kind) {
    case "deployment": return (origin.deployment_kind || "deployment") + " " + origin.deployment_id;
    case "robot_rollback": return "rolled back by itself from " + origin.from_version;
    default: return "local install";
  }
}

function endText(end) {
  switch (end.kind) {
    case "running": return "running now";
    case "replaced": return "replaced by " + end.by_version + " " + when(end.at);
    case "rolled_back": return "rolled back: " + end.reason;
    case "failed": return "failed: " + end.error;
    default: return end.kind;
  }
}

function diskText(disk) {
  if (!disk) return "";
  const parts = [];
  if (disk.slot_a_bytes != null) parts.push("slot A " + bytes(disk.slot_a_bytes));
  if (disk.slot_b_bytes != null) parts.push("slot B " + bytes(disk.slot_b_bytes));
  if (disk.data_bytes != null) {
    parts.push("data " + bytes(disk.data_bytes) + (disk.data_free_bytes != null ? " (" + bytes(disk.data_free_bytes) + " free)" : ""));
  }
  return parts.join(", ");
}

// Operator tags win over the robot's own of the same name, as group queries see them.
function tagList(robot) {
  const own = (robot.inventory && robot.inventory.tags) || {};
  const operator = robot.tags || {};
  const items = Object.entries(operator).map(([name, value]) =>
    el("li", { "data-tag": name, title: "set by an operator" }, name + "=" + value));
  for (const [name, value] of Object.entries(own)) {
    const overridden = name in operator;
    items.push(el("li", { "data-tag": overridden ? null : name, class: overridden ? "muted" : null,
      title: overridden ? "from the robot's config, overridden" : "from the robot's config" }, name + "=" + value + " (robot)"));
  }
  return items.length ? el("ul", { class: "tags" }, items) : el("span", { class: "muted" }, "none");
}

// "nav 1.4.0 (kept 2), telemetry 0.9.1 (last: rolled back ...)": the apps beside the OS.
function appsText(apps) {
  return (apps || []).map((app) => {
    const facts = [];
    if (app.kept && app.kept.length) facts.push("kept " + app.kept.length);
    if (app.last && !app.last.startsWith("activated")) facts.push("last: " + app.last);
    return app.name + " " + (app.version || "(none current)") + (facts.length ? " (" + facts.join("; ") + ")" : "");
  }).join(", ");
}

function inventorySection(robot) {
  const inv = robot.inventory;
  const failure = robot.last_failure;
  const facts = [];
  if (failure) {
    facts.push(fact("Last failure", el("span", { class: "bad-text", id: "robot-last-failure" },
      words(failure.event) + (failure.version ? " " + failure.version : "") + ", " + when(failure.at) + (failure.detail ? ": " + failure.detail : ""))));
  }
  facts.push(fact("Tags", tagList(robot)));
  if (!inv) {
    return section("Inventory", el("dl", { class: "facts" }, facts),
      el("p", { class: "muted" }, "The robot has not reported its inventory yet (robots older than the inventory never do)."));
  }
  facts.push(
    fact("Board", inv.board || "?"),
    fact("OS", (inv.os || "?") + (inv.os_version && !(inv.os || "").includes(inv.os_version) ? " (" + inv.os_version + ")" : "")),
    fact("Kernel", inv.kernel || "?"),
    fact("Addresses", (inv.addresses || []).join(", ") || "none"),
    fact("Disk", diskText(inv.disk) || "?"),
    fact("Apps", el("span", { id: "robot-apps" }, appsText(inv.apps) || "none")),
    fact("Reported", robot.inventory_at ? timeEl(robot.inventory_at) : "?"));
  return section("Inventory", el("dl", { class: "facts", id: "robot-inventory", "data-board": inv.board || "" }, facts));
}

/// Each app's current release, what the robot keeps, and (for a deployer) a switch to any kept
/// release, older or newer (a rollback deployment): no download, no reboot. `chosen` keeps each pick across
/// live redraws.
function appsSection(robot, chosen, result) {
  const apps = (robot.inventory && robot.inventory.apps) || [];
  if (!apps.length) return null;
  const rows = apps.map((app) => {
    const others = (app.kept || []).filter((v) => v !== app.version).reverse();
    let control = "";
    if (can("deployer") && others.length) {
      const to = el("select", { "aria-label": "Switch " + app.name + " to", "data-app-rollback-to": app.name },
        el("option", { value: "" }, "the release before this one"),
        others.map((version) => el("option", { value: version }, version)));
      to.value = others.includes(chosen[app.name]) ? chosen[app.name] : "";
      to.addEventListener("change", () => { chosen[app.name] = to.value; });
      control = el("span", { class: "actions" }, to, el("button", {
        type: "button", class: "danger", "data-action": "rollback-app", "data-app": app.name,
        onclick: async () => {
          if (!confirm("Switch " + app.name + " on " + robot.id + " to " + (to.value || "the release before this one") + "?")) return;
          try {
            const outcome = await act("/rollbacks", { target: "robot:" + robot.id, app: app.name, immediate: true, ...(to.value ? { to: to.value } : {}) });
            result.textContent = "Switching " + app.name + " to " + outcome.plan.map((p) => p.version).join(", ") +
              " (" + outcome.deployments.map((d) => d.id).join(", ") + ")";
          } catch (err) {
            result.textContent = "Switch refused: " + err.message;
          }
        },
      }, "Switch " + app.name));
    }
    return [el("strong", {}, app.name), el("span", { "data-app-version": app.name }, app.version || "none"),
      (app.kept || []).join(", "), app.last || "", control];
  });
  return section("Apps", table("Apps", ["App", "Current", "Kept", "Last activation", ""], rows), result);
}

function robotView(main, id) {
  const body = el("div");
  const result = el("p", { id: "robot-rollback-result", role: "status" });
  const appResult = el("p", { id: "robot-app-rollback-result", role: "status" });
  const chosenApps = {};
  let chosen = "";
  main.append(el("p", {}, el("a", { href: "#/fleet" }, "← Fleet")), body);
  return {
    async refresh() {
      const [robot, histories, events, environments] = await Promise.all([
        api("/robots/" + encodeURIComponent(id)),
        api("/history/releases?robot=" + encodeURIComponent(id)).catch(() => []),
        api("/history?limit=50&robot=" + encodeURIComponent(id)),
        api("/environments"),
      ]);
      // One history per track: the OS's (no app), then each app's.
      const osHistory = histories.find((h) => !h.app);
      const runs = osHistory ? osHistory.runs : [];
      const appRuns = histories.filter((h) => h.app).flatMap((h) => h.runs.map((run) => ({ app: h.app, ...run })));
      const earlier = [...new Set(runs.map((run) => run.version))].filter((v) => v !== robot.version).reverse();
      const to = el("select", { id: "robot-rollback-to", "aria-label": "Roll back to" },
        el("option", { value: "" }, "the release before this one"),
        earlier.map((version) => el("option", { value: version }, version)));
      // Live updates redraw the page: keep what the person picked.
      to.value = earlier.includes(chosen) ? chosen : "";
      to.addEventListener("change", () => { chosen = to.value; });
      const rollback = can("deployer") ? el("div", { class: "actions" }, to, el("button", {
        type: "button", class: "danger", "data-action": "rollback-robot",
        onclick: async () => {
          const target = to.value || "the release it ran before";
          if (!confirm("Roll " + id + " back to " + target + "?")) return;
          try {
            const outcome = await act("/rollbacks", { target: "robot:" + id, immediate: true, ...(to.value ? { to: to.value } : {}) });
            const plan = outcome.plan.map((p) => p.version).join(", ");
            result.textContent = "Rolling back to " + plan + " (" + outcome.deployments.map((d) => d.id).join(", ") + ")";
          } catch (err) {
            result.textContent = "Rollback refused: " + err.message;
          }
        },
      }, "Roll back this robot"), result) : null;
      body.replaceChildren(
        el("h1", {}, robot.id),
        el("div", { class: "card", id: "robot", "data-version": robot.version || "" },
          el("dl", { class: "facts" },
            fact("State", el("span", { class: "badge " + toneOf(robot.state) }, robotStateText(robot))),
            fact("Version", robot.version || "?"), fact("Groups", robot.groups.join(", ") || "none"),
            fact("Environment", environmentOf(robot, environments) || "none"), fact("Compatible", robot.compatible),
            fact("Enrolled", when(robot.enrolled_at)), fact("Last seen", timeEl(robot.last_seen))),
          rollback),
        inventorySection(robot),
        appsSection(robot, chosenApps, appResult),
        section("Slots", robot.slots ? table("Slots", ["Slot", "Version", "State", ""],
          robot.slots.slots.map((s) => [s.slot, s.version || "unknown", badge(s.state), s.slot === robot.slots.booted ? "booted" : ""])) :
          el("p", { class: "muted" }, "The robot has not reported its slots yet.")),
        section("Releases it ran", table("Release history", ["Version", "Since", "Committed", "How", "End"],
          runs.slice().reverse().map((run) => [run.version, when(run.started_at), run.committed_at ? when(run.committed_at) : "",
            originText(run.origin), el("span", { class: run.end.kind === "rolled_back" || run.end.kind === "failed" ? "bad-text" : "" }, endText(run.end))]))),
        appRuns.length ? section("App releases it ran", table("App release history", ["App", "Version", "Since", "Committed", "How", "End"],
          appRuns.sort((a, b) => b.started_at.localeCompare(a.started_at)).map((run) => [run.app, run.version, when(run.started_at), run.committed_at ? when(run.committed_at) : "",
            originText(run.origin), endText(run.end)]))) : null,
        section("Last events", table("Events", ["When", "Event", "Version", "Deployment", "Detail"],
          events.map((e) => [when(e.at), badge(e.event), e.version || "", e.deployment_id ? el("a", { href: "#/deployments/" + encodeURIComponent(e.deployment_id) }, e.deployment_id) : "", e.detail || ""]))));
    },
  };
}

function fact(term, value) {
  return [el("dt", {}, term), el("dd", {}, value)];
}

// ---------- releases ----------

function deployForm(release, groups, environments, close) {
  const targets = ["all", ...environments.map((e) => "env:" + e.name), ...groups.map((g) => "group:" + g.name)];
  const field = (label, input) => el("label", {}, el("span", {}, label), input);
  const target = el("select", { name: "target" }, targets.map((t) => el("option", { value: t }, t)));
  const kind = el("select", { name: "strategy" }, ["default", "immediate", "staged", "canary"].map((k) =>
    el("option", { value: k }, k === "default" ? "environment's default" : k)));
  const percents = el("input", { name: "percents", value: "10,50,100", inputmode: "numeric" });
  const wait = el("input", { name: "wait_secs", type: "number", min: 0, value: 60 });
  const canary = el("select", { name: "canary_group" }, groups.map((g) => el("option", { value: g.name }, g.name)));
  const maxFailures = el("input", { name: "max_failures", value: "0" });
  const autoRollback = el("input", { name: "auto_rollback", type: "checkbox" });
  const error = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "card deploy-form", "aria-label": "Deploy " + releaseLabel(release) },
    el("h3", {}, "Deploy " + releaseLabel(release)),
    field("Target", target), field("Strategy", kind), field("Stages (percent)", percents),
    field("Wait between stages (s; canary: empty waits for approval)", wait), field("Canary group", canary),
    field("Failures allowed (count or %)", maxFailures), el("label", { class: "check" }, autoRollback, " roll the stage back when it halts"),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Deploy"),
      el("button", { type: "button", onclick: close }, "Cancel")), error);
  // Only the fields the chosen strategy uses are shown.
  const showFor = (input, kinds) => { input.closest("label").hidden = !kinds.includes(kind.value); };
  const onKind = () => {
    showFor(percents, ["staged"]);
    showFor(wait, ["staged", "canary"]);
    showFor(canary, ["canary"]);
    showFor(maxFailures, ["staged", "canary"]);
    showFor(autoRollback, ["staged", "canary"]);
  };
  kind.addEventListener("change", onKind);
  onKind();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const guard = { max_failures: maxFailures.value.trim() || "0", auto_rollback: autoRollback.checked };
    let strategy;
    if (kind.value === "immediate") strategy = { kind: "immediate" };
    if (kind.value === "staged") strategy = { kind: "staged", percents: percents.value.split(",").map((p) => Number(p.trim())), wait_secs: Number(wait.value || 0), ...guard };
    if (kind.value === "canary") strategy = { kind: "canary", group: canary.value, ...(wait.value === "" ? {} : { wait_secs: Number(wait.value) }), ...guard };
    try {
      const created = await act("/deployments", { release: release.id, target: target.value, ...(strategy ? { strategy } : {}) });
      flash("Deployment " + created.id + " created");
      location.hash = "#/deployments/" + encodeURIComponent(created.id);
    } catch (err) {
      error.textContent = "Refused: " + err.message;
    }
  });
  return form;
}

function releasesView(main) {
  const envBox = el("div");
  const body = el("div");
  const formSlot = el("div");
  main.append(el("h1", {}, "Releases"), envBox, formSlot, body);
  let formOpenFor = null;
  const view = {
    async refresh() {
      const [releases, robots, groups, environments] = await Promise.all([api("/releases"), api("/robots"), api("/groups"), api("/environments")]);
      // An OS release runs as the robot's version; an app release as one of its inventory's apps.
      const runningOn = (rel) => robots.filter((r) => rel.app
        ? ((r.inventory && r.inventory.apps) || []).some((a) => a.name === rel.app && a.version === rel.version)
        : r.version === rel.version);
      envBox.replaceChildren(environments.length ? section("Environments", table("Environments", ["Environment", "Groups", "Runs", "Rules", ""],
        environments.map((env) => {
          const members = robots.filter((r) => env.groups.some((g) => r.groups.includes(g)));
          const versions = [...new Set(members.map((r) => r.version || "?"))];
          const others = environments.filter((e) => e.name !== env.name);
          const promote = can("deployer") && others.length ? el("span", { class: "actions" },
            el("select", { "aria-label": "Promote " + env.name + " to" }, others.map((o) => el("option", { value: o.name }, o.name))),
            el("button", {
              type: "button", "data-action": "promote",
              onclick: async (event) => {
                const to = event.target.previousSibling.value;
                try {
                  const created = await act("/environments/" + encodeURIComponent(env.name) + "/promote", { to });
                  flash("Promoted " + env.name + " to " + to + ": " + created.id);
                } catch (err) { flash("Promote refused: " + err.message, "bad"); }
              },
            }, "Promote")) : "";
          return [env.name, env.groups.join(", "), versions.join(", ") || "nothing",
            [env.approval_required ? "approval" : "", env.auto_deploy ? "auto deploy" : "", env.update_window ? "window" : ""].filter(Boolean).join(", "), promote];
        }))) : "");
      body.replaceChildren(table("Releases", ["Version", "Commit", "Branch", "Size", "Published", "Runs on", ""],
        releases.map((rel) => {
          const on = runningOn(rel);
          const where = on.length ? on.length + " robot" + (on.length > 1 ? "s" : "") + " (" +
            [...new Set(on.map((r) => environmentOf(r, environments)).filter(Boolean))].join(", ") + ")" : "none";
          return [el("strong", { "data-release": rel.version, "data-app": rel.app || null }, releaseLabel(rel)), el("code", {}, (rel.commit || "").slice(0, 10)), rel.branch || "",
            bytes(rel.size), when(rel.created_at), where.replace(" ()", ""),
            can("deployer") ? el("button", {
              type: "button", "data-action": "deploy", "data-version": rel.version, "data-app": rel.app || null,
              onclick: () => {
                formOpenFor = rel.id;
                formSlot.replaceChildren(deployForm(rel, groups, environments, () => { formOpenFor = null; formSlot.replaceChildren(); }));
                formSlot.querySelector("select").focus();
              },
            }, "Deploy…") : ""];
        }), "No releases yet: publish one with rota release publish."));
      if (!formOpenFor) formSlot.replaceChildren();
    },
  };
  return view;
}

// ---------- audit ----------

const DEPLOYMENT_ID = /^dep_[0-9a-f]+$/;

/// A link to the page of what `key` names, where the dashboard has one; else the text. A
/// number under "robots" is a count, not an id.
function idLink(key, value) {
  const text = String(value);
  if (typeof value !== "string") return text;
  if (DEPLOYMENT_ID.test(text)) return el("a", { href: "#/deployments/" + encodeURIComponent(text) }, text);
  if (["robot", "robots", "robot_id"].includes(key)) return el("a", { href: "#/robots/" + encodeURIComponent(text) }, text);
  return text;
}

/// An audit target ("deployment:dep_…", "robot:ID", "robots:A,B", "group:lab", ...), linked.
function targetView(target) {
  if (!target) return "";
  const [kind, rest] = target.split(/:(.*)/s);
  if (rest === undefined || !["deployment", "robot", "robots"].includes(kind)) return target;
  const ids = kind === "robots" ? rest.split(",") : [rest];
  return el("span", {}, kind + ":", ids.map((id, i) => [i ? "," : "", idLink(kind, id)]));
}

function detailValue(key, value) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "none");
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (key === "strategy" && typeof value === "object" && value.kind) return strategyText(value);
  if (Array.isArray(value)) {
    if (!value.length) return el("span", { class: "muted" }, "none");
    if (value.every((v) => v === null || typeof v !== "object")) return value.map((v, i) => [i ? ", " : "", idLink(key, v)]);
    return el("ol", { class: "kv-items" }, value.map((v) => el("li", {}, detailValue(key, v))));
  }
  if (typeof value === "object") return keyValues(value);
  return idLink(key, value);
}

function keyValues(object) {
  return el("dl", { class: "kv" }, Object.entries(object).map(([key, value]) =>
    [el("dt", {}, words(key) + ":"), el("dd", {}, detailValue(key, value))]));
}

/// An audit entry's details as "key: value" lines, ids linked; the exact JSON stays one click
/// (or a hover) away for whoever needs the raw record.
function auditDetails(details) {
  const raw = JSON.stringify(details);
  const readable = details && typeof details === "object" && !Array.isArray(details) ? keyValues(details) : detailValue("", details);
  return el("div", { class: "details", title: raw },
    readable, el("details", { class: "raw" }, el("summary", {}, "JSON"), el("code", {}, JSON.stringify(details, null, 1))));
}

function auditView(main) {
  const actor = el("input", { type: "search", id: "audit-actor", placeholder: "actor (key id, name, github)", "aria-label": "Actor contains" });
  const action = el("input", { type: "search", id: "audit-action", placeholder: "action (deployment, rollback.create)", "aria-label": "Action" });
  const since = el("input", { type: "datetime-local", "aria-label": "Since" });
  const body = el("div");
  main.append(el("h1", {}, "Audit log"), el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); refresh(); } },
    actor, action, since, el("button", { type: "submit" }, "Filter")), body);
  const view = {
    async refresh() {
      const query = new URLSearchParams({ limit: "200" });
      if (actor.value.trim()) query.set("actor", actor.value.trim());
      if (action.value.trim()) query.set("action", action.value.trim());
      if (since.value) query.set("since", new Date(since.value).toISOString().replace(/\.\d+Z$/, "Z"));
      const entries = await api("/audit?" + query);
      // Says which filter the shown rows answer, so a reader (or a test) can tell a filtered
      // table from the one shown before it.
      body.dataset.query = query.toString();
      body.replaceChildren(table("Audit entries", ["When", "Actor", "Action", "Target", "Details", "From"],
        entries.map((e) => [when(e.at), e.actor, el("code", {}, e.action), targetView(e.target),
          e.details ? auditDetails(e.details) : "", e.source_ip || ""]), "No entries match."));
    },
  };
  return view;
}

// ---------- notifications ----------

/// The channels (never a secret: the server answers none) with a test button for deployers,
/// and the delivery log, newest first.
function notificationsView(main) {
  const body = el("div");
  main.append(el("h1", {}, "Notifications"), body);
  return {
    async refresh() {
      const [channels, deliveries] = await Promise.all([api("/notifications/channels"), api("/notifications/deliveries?limit=50")]);
      body.replaceChildren(
        section("Channels", table("Notification channels", ["Channel", "Kind", "Where", "Signed", "Environment", "Events", ""],
          channels.map((c) => [el("strong", { "data-channel": c.name }, c.name), c.kind,
            c.kind === "email" ? (c.to || []).join(", ") + " via " + c.url : c.url,
            c.signed ? "yes" : "no", c.environment || "all", (c.events || []).join(", ") || "all",
            can("deployer") ? el("button", {
              type: "button", "data-action": "test-channel", "data-channel": c.name,
              onclick: async () => {
                try {
                  const delivery = await act("/notifications/channels/" + encodeURIComponent(c.name) + "/test");
                  flash("Test notification " + delivery.id + " queued for " + c.name);
                  await refresh();
                } catch (err) { flash("Test refused: " + err.message, "bad"); }
              },
            }, "Send test") : ""]),
          "No channels yet: an admin adds one with rota notify set.")),
        section("Deliveries", table("Notification deliveries", ["When", "Channel", "Event", "State", "Attempts", "Text or error"],
          deliveries.map((d) => [when(d.created_at), d.channel, el("code", {}, d.event),
            el("span", { class: "badge " + (d.state === "delivered" ? "good" : d.state === "failed" ? "bad" : "warn"), "data-delivery": d.id }, d.state),
            String(d.attempts), d.last_error ? el("span", { class: "bad-text" }, d.last_error) : d.text]),
          "Nothing sent yet.")));
    },
  };
}

// ---------- charts ----------

function chartFrame(title, description, width, height, drawInside) {
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title + ": " + description, class: "chart" },
    svg("title", {}, title));
  drawInside(box);
  return el("figure", { class: "card" }, el("h2", {}, title), box, el("figcaption", { class: "muted" }, description));
}

/// A y-axis top that puts every one of the 4 grid lines on a whole number.
function niceMax(value) {
  return Math.max(4, Math.ceil(value / 4) * 4);
}

function axes(box, x0, y0, x1, y1, yMax, xLabel, yLabel) {
  box.append(svg("line", { x1: x0, y1: y0, x2: x1, y2: y0, class: "axis" }), svg("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis" }));
  for (let i = 0; i <= 4; i++) {
    const value = Math.round((yMax * i) / 4);
    const y = y0 - ((y0 - y1) * i) / 4;
    box.append(svg("line", { x1: x0, y1: y, x2: x1, y2: y, class: "grid" }), svg("text", { x: x0 - 6, y: y + 4, class: "tick", "text-anchor": "end" }, value));
  }
  box.append(svg("text", { x: (x0 + x1) / 2, y: y0 + 34, class: "label", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 14, y: (y0 + y1) / 2, class: "label", "text-anchor": "middle", transform: `rotate(-90 14 ${(y0 + y1) / 2})` }, yLabel));
}

/// A step for an axis from 0 to `max` in about `count` steps: a mantissa from `mantissas`
/// times a power of ten, and the decimals its tick labels need.
function niceStep(max, count, mantissas) {
  const raw = max / count;
  const exponent = Math.floor(Math.log10(raw));
  const power = 10 ** exponent;
  const mantissa = mantissas.find((m) => m * power >= raw * (1 - 1e-9)) || 10;
  const decimals = mantissa === 10 ? -exponent - 1 : -exponent + (Number.isInteger(mantissa) ? 0 : 1);
  return { step: mantissa * power, decimals: Math.max(0, decimals) };
}

function ticks(max, count, mantissas) {
  const { step, decimals } = niceStep(max, count, mantissas);
  const values = [];
  for (let i = 0; values.length === 0 || values[values.length - 1] < max - 1e-9; i++) values.push(i * step);
  return values.map((value) => ({ value, text: value.toFixed(decimals) }));
}

const PROGRESS_IN_FLIGHT = new Set(["awaiting_approval", "running", "paused"]);

/// One deployment's robots committed over time, on its own scales: a two-robot rollout that
/// took a second is as readable as a fleet-wide one that took an hour.
function progressPanel(d) {
  const W = 640, H = 190, x0 = 56, x1 = 616, y0 = 140, y1 = 14;
  const committed = d.robots.filter((r) => r.state === "committed" && r.finished_after_secs != null)
    .sort((a, b) => a.finished_after_secs - b.finished_after_secs);
  const failed = d.robots.filter((r) => FAILED.has(r.state) && r.finished_after_secs != null);
  const ended = Math.max(0, ...d.robots.map((r) => r.finished_after_secs || 0));
  const elapsed = PROGRESS_IN_FLIGHT.has(d.state) ? (Date.now() - Date.parse(d.created_at)) / 1000 : 0;
  const inMinutes = Math.max(ended, elapsed) > 180;
  const unit = inMinutes ? 60 : 1;
  const span = Math.max(ended, elapsed) / unit || 1;
  const xTicks = ticks(span, 4, [1, 2, 2.5, 5]);
  const xMax = xTicks[xTicks.length - 1].value;
  const robots = d.robots.length;
  const yTicks = robots <= 5 ? Array.from({ length: robots + 1 }, (_, n) => ({ value: n, text: String(n) })) : ticks(robots, 4, [1, 2, 5]);
  const yMax = yTicks[yTicks.length - 1].value;
  const x = (secs) => x0 + ((x1 - x0) * secs) / unit / xMax;
  const y = (count) => y0 - ((y0 - y1) * count) / yMax;
  const timeText = (secs) => (inMinutes ? (secs / 60).toFixed(1) + " min" : (secs < 10 ? secs.toPrecision(2) : secs.toFixed(0)) + " s");
  const last = committed.length ? committed[committed.length - 1].finished_after_secs : null;
  const summary = committed.length + " of " + robots + " committed" + (last !== null ? ", the last after " + timeText(last) : "") +
    (failed.length ? "; " + failed.length + " rolled back or failed" : "");
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart progress-chart", "aria-label": releaseLabel(d) + ": " + summary });
  box.append(svg("line", { x1: x0, y1: y0, x2: x1, y2: y0, class: "axis" }), svg("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis" }));
  for (const tick of yTicks) {
    box.append(svg("line", { x1: x0, y1: y(tick.value), x2: x1, y2: y(tick.value), class: "grid" }),
      svg("text", { x: x0 - 8, y: y(tick.value) + 4, class: "tick y-tick", "text-anchor": "end" }, tick.text));
  }
  for (const tick of xTicks) {
    const at = x(tick.value * unit);
    box.append(svg("line", { x1: at, y1: y0, x2: at, y2: y0 + 5, class: "axis" }),
      svg("text", { x: at, y: y0 + 20, class: "tick x-tick", "text-anchor": "middle" }, tick.text));
  }
  box.append(svg("text", { x: (x0 + x1) / 2, y: y0 + 42, class: "label", "text-anchor": "middle" },
    (inMinutes ? "minutes" : "seconds") + " since the deployment started"),
  svg("text", { x: 14, y: (y0 + y1) / 2, class: "label", "text-anchor": "middle", transform: `rotate(-90 14 ${(y0 + y1) / 2})` }, "robots committed"));
  let path = `M ${x0} ${y0}`;
  committed.forEach((r, n) => { path += ` H ${x(r.finished_after_secs).toFixed(1)} V ${y(n + 1).toFixed(1)}`; });
  path += ` H ${x(Math.max(ended, elapsed)).toFixed(1)}`;
  box.append(svg("path", { d: path, class: "series" }));
  committed.forEach((r, n) => box.append(svg("circle", { cx: x(r.finished_after_secs), cy: y(n + 1), r: 4.5, class: "commit" },
    svg("title", {}, r.robot_id + " committed after " + timeText(r.finished_after_secs) + " (" + (n + 1) + " of " + robots + ")"))));
  failed.forEach((r) => box.append(svg("circle", { cx: x(r.finished_after_secs), cy: y0, r: 5, class: "failed" },
    svg("title", {}, r.robot_id + " " + words(r.state) + " after " + timeText(r.finished_after_secs)))));
  return el("div", { class: "progress-panel", "data-deployment": d.id },
    el("h3", {}, releaseLabel(d) + " → " + d.target, " ", el("span", { class: "kind" }, d.kind)),
    el("p", { class: "muted small" }, summary), box);
}

function progressChart(details) {
  const shown = details.filter((d) => d.robots.length);
  return el("figure", { class: "card wide" }, el("h2", {}, "Rollout progress over time"),
    el("figcaption", { class: "muted" }, "robots committed against time since each of the latest deployments started, each on its own scale; red dots: rolled back or failed"),
    shown.length ? el("div", { class: "panels" }, shown.map(progressPanel)) : el("p", { class: "muted empty" }, "No deployments yet."));
}

function commitsChart(deployments) {
  const byVersion = new Map();
  for (const d of deployments) {
    const entry = byVersion.get(releaseLabel(d)) || { commits: 0, rollbacks: 0 };
    entry.commits += d.counts.committed || 0;
    entry.rollbacks += failures(d.counts);
    byVersion.set(releaseLabel(d), entry);
  }
  const versions = [...byVersion.keys()].sort();
  const W = 640, H = 300, x0 = 56, y0 = 250, x1 = 620, y1 = 20;
  const yMax = niceMax(Math.max(1, ...[...byVersion.values()].flatMap((e) => [e.commits, e.rollbacks])));
  return chartFrame("Commits and rollbacks per release", "robots that committed each release, and robots that rolled back or failed", W, H, (box) => {
    axes(box, x0, y0, x1, y1, yMax, "release", "robots");
    const slot = (x1 - x0) / Math.max(1, versions.length);
    versions.forEach((version, i) => {
      const e = byVersion.get(version);
      const bar = Math.min(40, slot / 3);
      const cx = x0 + slot * i + slot / 2;
      [["commits", e.commits, "bar-good"], ["rollbacks", e.rollbacks, "bar-bad"]].forEach(([label, value, cls], j) => {
        const h = ((y0 - y1) * value) / yMax;
        const x = cx - bar + j * bar;
        box.append(svg("rect", { x, y: y0 - h, width: bar - 2, height: h, class: cls }, svg("title", {}, version + ": " + value + " " + label)),
          svg("text", { x: x + bar / 2 - 1, y: y0 - h - 4, "text-anchor": "middle", class: "tick" }, value));
      });
      box.append(svg("text", { x: cx, y: y0 + 16, "text-anchor": "middle", class: "tick" }, version));
    });
    box.append(svg("rect", { x: x1 - 190, y: 2, width: 10, height: 10, class: "bar-good" }), svg("text", { x: x1 - 176, y: 11, class: "legend" }, "committed"),
      svg("rect", { x: x1 - 90, y: 2, width: 10, height: 10, class: "bar-bad" }), svg("text", { x: x1 - 76, y: 11, class: "legend" }, "rolled back"));
  });
}

function timeToCommitChart(details) {
  const times = details.flatMap((d) => d.robots.filter((r) => r.state === "committed" && r.finished_after_secs != null).map((r) => r.finished_after_secs));
  const W = 640, H = 300, x0 = 56, y0 = 250, x1 = 620, y1 = 20;
  const bins = 10;
  const tMax = Math.max(1, ...times);
  const counts = new Array(bins).fill(0);
  for (const t of times) counts[Math.min(bins - 1, Math.floor((t / tMax) * bins))]++;
  const sorted = times.slice().sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  const yMax = niceMax(Math.max(1, ...counts));
  return chartFrame("Time to commit", "how many robots committed within each span of seconds after their deployment started; median " + median.toFixed(1) + " s over " + times.length + " commits", W, H, (box) => {
    axes(box, x0, y0, x1, y1, yMax, "seconds from deployment start to commit", "robots");
    const w = (x1 - x0) / bins;
    counts.forEach((c, i) => {
      const h = ((y0 - y1) * c) / yMax;
      box.append(svg("rect", { x: x0 + i * w + 1, y: y0 - h, width: w - 2, height: h, class: "bar-good" }, svg("title", {}, c + " robots")));
      const upTo = (tMax * (i + 1)) / bins;
      box.append(svg("text", { x: x0 + i * w + w / 2, y: y0 + 16, "text-anchor": "middle", class: "tick" }, "≤" + upTo.toFixed(tMax < 20 ? 1 : 0)));
    });
    if (times.length) {
      const mx = x0 + ((x1 - x0) * median) / tMax;
      box.append(svg("line", { x1: mx, y1: y0, x2: mx, y2: y1, class: "median" }), svg("text", { x: mx + 4, y: y1 + 12, class: "legend" }, "median " + median.toFixed(1) + " s"));
    }
  });
}

function chartsView(main) {
  const body = el("div", { class: "charts" });
  main.append(el("h1", {}, "Charts"), body);
  return {
    async refresh() {
      const deployments = await api("/deployments?limit=200");
      const latest = await Promise.all(deployments.slice(0, 6).map((d) => api("/deployments/" + encodeURIComponent(d.id))));
      body.replaceChildren(progressChart(latest), commitsChart(deployments), timeToCommitChart(latest));
    },
  };
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => { route(); $("#main").focus(); });
  try {
    await startApp(await call("GET", "/ui/session"));
  } catch (err) {
    showLogin("");
  }
});
