// Rota's dashboard in a real headless Chromium: the person's view of a fleet of 20 simulated
// robots. Started by the test in_a_real_browser in fleet/server/tests/dashboard.rs (through
// scripts/system-tests/dashboard), which runs rota-server, the robots and the releases, and
// passes:
//   ROTA_URL            the server
//   ROTA_DEPLOYER_KEY   an operator key with the deployer role ("alice")
//   ROTA_VIEWER_KEY     a viewer key ("victor")
//   ROTA_ADMIN_KEY      the admin key: checks from outside what the page did, and acts as a
//                       second operator (a deployment someone else created, for approval)
//   ROTA_ARTIFACTS      where screenshots go
//   CHROMIUM            the browser (default /usr/bin/chromium); nothing is downloaded
// The steps run in order and share one browser: each starts where the one before left off.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const URL_ = need("ROTA_URL");
const DEPLOYER_KEY = need("ROTA_DEPLOYER_KEY");
const VIEWER_KEY = need("ROTA_VIEWER_KEY");
const ADMIN_KEY = need("ROTA_ADMIN_KEY");
const ARTIFACTS = process.env.ROTA_ARTIFACTS || new URL("./artifacts", import.meta.url).pathname;
const LONG = 180_000; // a hang guard for rollouts, not a performance bound

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/system-tests/dashboard`);
  return value;
}

let browser, context, page;
const remembered = {};

async function shot(name, fullPage = true) {
  await page.screenshot({ path: join(ARTIFACTS, name + ".png"), fullPage });
}

/// The server's own view, read with the admin key: what really happened, whatever the page says.
async function server(path) {
  const response = await fetch(URL_ + "/api/v1" + path, { headers: { Authorization: "Bearer " + ADMIN_KEY } });
  assert.equal(response.status, 200, path);
  return response.json();
}

/// A change through the API as the admin: another operator than the page's deployer.
async function asAdmin(method, path, body) {
  const response = await fetch(URL_ + "/api/v1" + path, {
    method,
    headers: { Authorization: "Bearer " + ADMIN_KEY, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/// Polls the server's own view of `path` until `check` holds; returns it.
async function serverUntil(path, what, check) {
  const deadline = Date.now() + LONG;
  for (;;) {
    const value = await server(path);
    if (check(value)) return value;
    assert.ok(Date.now() < deadline, `gave up waiting for ${what}: ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/// Shows `hash` and waits until its view has rendered its data, so nothing that follows can
/// see the page before.
async function go(hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForFunction((h) => document.querySelector("#main")?.dataset.route === h, hash);
}

async function logIn(key) {
  await page.fill("#api-key", key);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])");
}

/// Opens the releases page's deploy form for `version`, targeting the whole fleet with at most
/// 0 failures; `fields` names the form's other fields (selects and inputs) and their values.
/// Opens the Deploy form of OS release `version` (of app `app`'s release when given) and fills it.
async function fillDeployForm(version, fields, app) {
  await go("#/releases");
  const release = app ? `[data-app='${app}']` : ":not([data-app])";
  await page.click(`button[data-action=deploy][data-version='${version}']${release}`);
  const form = "form.deploy-form";
  // The strategy first: it decides which other fields the form shows.
  // An immediate deployment has no failure budget: the form hides that field.
  const budget = fields.strategy === "immediate" ? {} : { max_failures: "0" };
  for (const [name, value] of Object.entries({ target: "all", ...fields, ...budget })) {
    const selector = `${form} [name=${name}]`;
    if (await page.locator(selector).evaluate((node) => node.tagName === "SELECT")) {
      await page.selectOption(selector, value);
    } else {
      await page.fill(selector, value);
    }
  }
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (err) => { throw err; });
});

after(async () => {
  await browser?.close();
});

test("a wrong key is refused; the deployer's key logs in", async () => {
  await page.goto(URL_ + "/");
  await page.waitForSelector("#login:not([hidden])");
  await shot("01-login");
  await page.fill("#api-key", "rota_op_not_a_real_key");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#login-error:has-text('Login refused')");
  await logIn(DEPLOYER_KEY);
  assert.match(await page.textContent("#who"), /alice \(deployer\)/);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "rota_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie), "", "the page's script cannot read the cookie");
  // Marks this page load: a reload would lose it.
  await page.evaluate(() => { window.__sameLoad = true; });
});

test("the fleet page lists the 20 robots, counts them, and filters", async () => {
  await go("#/fleet");
  await page.waitForSelector("[data-stat=robots] strong:text-is('20')");
  await page.waitForSelector("#live.on");
  assert.equal(await page.locator("#main tbody tr").count(), 20);
  assert.equal(await page.textContent("[data-stat=healthy] strong"), "20");
  await page.fill("#fleet-search", "staging");
  await page.waitForSelector("#fleet-shown:text-is('3 of 20 robots shown')");
  await page.fill("#fleet-search", "");
  await page.waitForSelector("#fleet-shown:text-is('20 of 20 robots shown')");
  await shot("02-fleet");
});

test("a staged rollout started from the releases page advances live, stage by stage", async () => {
  await fillDeployForm("2.0.0", { strategy: "staged", percents: "10,50,100", wait_secs: "3" });
  // Records every stage the deployment page shows, as the page changes by itself.
  await page.evaluate(() => {
    window.__stagesSeen = [];
    new MutationObserver(() => {
      const card = document.querySelector("#deployment");
      const stage = card && Number(card.dataset.currentStage);
      if (card && window.__stagesSeen.at(-1) !== stage) window.__stagesSeen.push(stage);
    }).observe(document.body, { subtree: true, childList: true, attributes: true });
  });
  await shot("03-deploy-form");
  await page.click("form.deploy-form button[type=submit]");
  await page.waitForURL(/#\/deployments\/dep_/);
  remembered.staged = decodeURIComponent(page.url().split("#/deployments/")[1]);
  await page.waitForSelector("#deployment[data-current-stage='1']", { timeout: LONG });
  await shot("04-deployment-stage-2");
  await page.waitForSelector("#deployment[data-state=succeeded]", { timeout: LONG });
  await shot("05-deployment-succeeded");
  const seen = await page.evaluate(() => window.__stagesSeen);
  assert.deepEqual(seen, [0, 1, 2], "the page showed each stage in turn");
  assert.equal(await page.evaluate(() => window.__sameLoad), true, "no reload");
  const done = await server("/deployments/" + remembered.staged);
  assert.equal(done.state, "succeeded");
  assert.equal(done.counts.committed, 20);
  assert.equal(await page.locator(".stage").count(), 3);
});

test("the fleet page shows every robot on 2.0.0", async () => {
  await go("#/fleet");
  await page.fill("#fleet-search", "2.0.0");
  await page.waitForSelector("#fleet-shown:text-is('20 of 20 robots shown')", { timeout: LONG });
  await page.fill("#fleet-search", "");
});

test("a canary whose health check fails halts the rollout", async () => {
  // No wait: the rest of the fleet would follow the canaries only on approval.
  await fillDeployForm("3.0.0", { strategy: "canary", canary_group: "canary", wait_secs: "" });
  await page.click("form.deploy-form button[type=submit]");
  await page.waitForURL(/#\/deployments\/dep_/);
  remembered.canary = decodeURIComponent(page.url().split("#/deployments/")[1]);
  await page.waitForSelector("#deployment[data-state=halted]", { timeout: LONG });
  await page.waitForSelector(".halt:has-text('Halted:')");
  await page.waitForSelector("[data-assignment=robot-001]:text-is('rolled back')", { timeout: LONG });
  for (const id of ["robot-002", "robot-003"]) {
    await page.waitForSelector(`[data-assignment=${id}]:text-is('committed')`, { timeout: LONG });
  }
  await page.waitForSelector("[data-assignment=robot-020]:text-is('cancelled')");
  assert.match(await page.textContent("#deployment"), /1 failed \(halts past 0\)/);
  await page.waitForSelector("[data-action=rollback]");
  await shot("06-canary-halted");
  const halted = await server("/deployments/" + remembered.canary);
  assert.equal(halted.state, "halted");
});

test("rollback from the halted deployment brings the canaries back", async () => {
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("[data-action=rollback]");
  await page.waitForURL((url) => !url.href.endsWith(remembered.canary));
  remembered.rollback = decodeURIComponent(page.url().split("#/deployments/")[1]);
  await page.waitForSelector("#deployment[data-state=succeeded]", { timeout: LONG });
  await shot("07-rollback-succeeded");
  const rollback = await server("/deployments/" + remembered.rollback);
  assert.equal(rollback.kind, "rollback");
  assert.equal(rollback.version, "2.0.0");
  assert.deepEqual(rollback.robots.map((r) => r.robot_id).sort(), ["robot-002", "robot-003"]);
  await go("#/fleet");
  await page.fill("#fleet-search", "3.0.0");
  await page.waitForSelector("#fleet-shown:text-is('0 of 20 robots shown')", { timeout: LONG });
  await page.fill("#fleet-search", "2.0.0");
  await page.waitForSelector("#fleet-shown:text-is('20 of 20 robots shown')");
  await page.fill("#fleet-search", "");
  const robots = await server("/robots");
  assert.ok(robots.every((r) => r.version === "2.0.0"), JSON.stringify(robots.map((r) => [r.id, r.version])));
});

test("a robot's page shows its history, slots, events and inventory, and rolls it back", async () => {
  await go("#/robots/robot-001");
  await page.waitForSelector("#main :text('rolled back: health check failed')");
  assert.equal(await page.locator("section:has(h2:text-is('Slots')) tbody tr").count(), 2);
  await shot("08-robot-001");
  await go("#/robots/robot-010");
  await page.waitForSelector("#robot[data-version='2.0.0']");
  await page.waitForSelector("#robot-inventory[data-board='Raspberry Pi 5 Model B Rev 1.0']");
  assert.match(await page.textContent("#robot-inventory"), /6\.6\.31\+rpt-rpi-2712/);
  assert.equal(await page.textContent("[data-tag=site]"), "site=lab");
  assert.equal(await page.textContent("[data-tag=arm]"), "arm=so-100 (robot)");
  await page.selectOption("#robot-rollback-to", "1.0.0");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("[data-action=rollback-robot]");
  await page.waitForSelector("#robot-rollback-result:not(:empty)");
  assert.match(await page.textContent("#robot-rollback-result"), /^Rolling back to 1\.0\.0/);
  await page.waitForSelector("#robot[data-version='1.0.0']", { timeout: LONG });
  await shot("09-robot-010-rolled-back");
});

test("the deployments timeline, audit log and charts render", async () => {
  await go("#/deployments");
  await page.waitForSelector(`[data-deployment='${remembered.rollback}']`);
  assert.ok(await page.locator(".timeline-list > li").count() >= 4);
  await shot("10-deployments");
  await go("#/audit");
  await page.fill("#audit-action", "rollback");
  await page.click("#main form button[type=submit]");
  await page.waitForSelector("#main [data-query='limit=200&action=rollback']");
  assert.ok(await page.locator("#main td:has-text('rollback.create')").count() > 0);
  assert.equal(await page.locator("#main td:has-text('deployment.create')").count(), 0, "filtered by action");
  await page.fill("#audit-action", "");
  await page.fill("#audit-actor", "alice");
  await page.click("#main form button[type=submit]");
  await page.waitForSelector("#main [data-query='limit=200&actor=alice']");
  assert.ok(await page.locator("#main td:has-text('deployment.create')").count() > 0);
  await shot("11-audit");
  await go("#/charts");
  await page.waitForSelector("svg.chart path.series");
  assert.equal(await page.locator("#main figure").count(), 3);
  assert.ok(await page.locator(".progress-panel svg.chart").count() >= 4, "one progress panel per deployment");
  assert.ok(await page.locator("svg.chart rect.bar-bad").count() > 0, "rollbacks are charted");
  await shot("12-charts");
});

test("audit details are readable, not raw JSON", async () => {
  await go("#/audit");
  await page.fill("#audit-actor", "");
  await page.fill("#audit-action", "rollback.create");
  await page.click("#main form button[type=submit]");
  await page.waitForSelector("#main [data-query='limit=200&action=rollback.create']");
  // The rollback of the halted canary (the other one sent robot-010 back).
  const row = page.locator("#main tbody tr", { hasText: "robots:robot-002,robot-003" });
  assert.equal(await row.count(), 1);
  const cell = row.locator("td[data-label=Details]");
  const text = await cell.innerText();
  assert.doesNotMatch(text, /[{}"]/, "no JSON syntax in what a person reads: " + text);
  assert.match(text, /immediate:\s*yes/);
  assert.match(text, /version:\s*2\.0\.0/);
  assert.match(text, /unresolved:\s*0/);
  // Ids lead to their pages, in the details and in the target; a count of robots is no id.
  assert.equal(await cell.locator(`a[href='#/deployments/${remembered.rollback}']`).count(), 1);
  assert.match(text, /robots:\s*2/);
  assert.equal(await cell.locator("a[href^='#/robots/']").count(), 0);
  for (const id of ["robot-002", "robot-003"]) {
    assert.equal(await row.locator(`td[data-label=Target] a[href='#/robots/${id}']`).count(), 1);
  }
  // The exact record is still there: on hover, and under a "JSON" toggle.
  const raw = JSON.parse(await cell.locator(".details").getAttribute("title"));
  const audited = (await server("/audit?action=rollback.create")).find((e) => e.target === "robots:robot-002,robot-003");
  assert.deepEqual(raw, audited.details);
  assert.equal(await cell.locator("details.raw summary").textContent(), "JSON");
  assert.deepEqual(JSON.parse(await cell.locator("details.raw code").textContent()), audited.details);

  // A robot named in the details leads to its page.
  await page.fill("#audit-action", "group.add_robot");
  await page.click("#main form button[type=submit]");
  await page.waitForSelector("#main [data-query='limit=200&action=group.add_robot']");
  const added = page.locator("#main tbody tr", { hasText: "group:canary" }).last();
  assert.match(await added.locator("td[data-label=Details]").innerText(), /^robot:\s*robot-001\b/);
  assert.equal(await added.locator("td[data-label=Details] a[href='#/robots/robot-001']").count(), 1);

  // A deployment's strategy reads as words, as on its page.
  await page.fill("#audit-action", "deployment.create");
  await page.click("#main form button[type=submit]");
  await page.waitForSelector("#main [data-query='limit=200&action=deployment.create']");
  const staged = page.locator("#main tbody tr", { has: page.locator(`a[href='#/deployments/${remembered.staged}']`) });
  assert.match(await staged.locator("td[data-label=Details]").innerText(), /strategy:\s*staged 10→50→100%, 3 s between/);
  await shot("11b-audit-details");
});

test("progress chart of a two-robot rollout is legible", async () => {
  // A rollout of seconds on two robots, next to the 20-robot ones: it used to be a sliver at
  // the bottom left of one chart scaled for the largest and longest.
  const created = await asAdmin("POST", "/deployments", { release: "3.0.0", target: "robots:robot-004,robot-005", strategy: { kind: "immediate" } });
  const done = await serverUntil("/deployments/" + created.id, "the two robots", (d) => d.state !== "running");
  assert.equal(done.state, "succeeded");
  const last = Math.max(...done.robots.map((r) => r.finished_after_secs));
  await go("#/charts");
  const panel = page.locator(`.progress-panel[data-deployment='${created.id}']`);
  await panel.waitFor();
  assert.match(await panel.innerText(), /2 of 2 committed, the last after \d/);
  // Its own count scale: one grid line per robot.
  assert.deepEqual(await panel.locator("text.y-tick").allTextContents(), ["0", "1", "2"]);
  // Its own time scale: a few ticks from 0 to just past its last commit.
  const xTicks = (await panel.locator("text.x-tick").allTextContents()).map(Number);
  assert.ok(xTicks.length >= 3 && xTicks.length <= 6, `x ticks ${xTicks}`);
  assert.equal(xTicks[0], 0);
  assert.ok(xTicks.every((t, i) => i === 0 || t > xTicks[i - 1]), `x ticks ${xTicks}`);
  assert.ok(xTicks.at(-1) >= last && xTicks.at(-1) <= 1.5 * last + 0.001, `x ticks ${xTicks} for a last commit after ${last} s`);
  // A step and a dot per commit, at the heights of 1 and 2.
  const tickY = async (label) => Number(await panel.locator(`text.y-tick:text-is('${label}')`).getAttribute("y")) - 4;
  const dots = await panel.locator("circle.commit").evaluateAll((nodes) => nodes.map((n) => Number(n.getAttribute("cy"))));
  assert.deepEqual(dots.map(Math.round), [Math.round(await tickY("1")), Math.round(await tickY("2"))]);
  // Legible on screen: labels of a readable size that do not run into each other.
  const boxes = await panel.locator("text.x-tick").evaluateAll((nodes) => nodes.map((n) => n.getBoundingClientRect().toJSON()));
  for (const box of boxes) assert.ok(box.height >= 11, `a tick label ${box.height}px high`);
  boxes.forEach((box, i) => i && assert.ok(box.left >= boxes[i - 1].right + 4, "x tick labels overlap"));
  await panel.scrollIntoViewIfNeeded();
  // The charts page redraws on its refresh tick: a redraw during the screenshot detached the
  // panel ("Element is not attached to the DOM"). Take it again from the new one.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.locator(`.progress-panel[data-deployment='${created.id}']`).screenshot({ path: join(ARTIFACTS, "12b-two-robot-progress.png") });
      break;
    } catch (err) {
      if (attempt === 3 || !/not attached/.test(err.message)) throw err;
    }
  }
});

test("fleet page shows a running rollout", async () => {
  // Two canaries of production's 17 robots, then the rest on approval: it runs until approved.
  const created = await asAdmin("POST", "/deployments", { release: "4.0.0", target: "env:production", strategy: { kind: "canary", count: 2 } });
  remembered.canary4 = created.id;
  await go("#/fleet");
  const row = page.locator(`#fleet-rollouts [data-rollout='${created.id}']`);
  await row.waitFor();
  await page.waitForSelector(`#fleet-rollouts [data-rollout='${created.id}'] [data-awaits-approval]`, { timeout: LONG });
  const text = await row.innerText();
  for (const part of ["4.0.0 → env:production", "running", "waits for approval", "Stage 1 of 2", "2 of 17 committed", "15 waiting", "0 failed"]) {
    assert.ok(text.includes(part), `the rollout row says ${JSON.stringify(part)}: ${text}`);
  }
  assert.equal(await row.locator("[role=progressbar]").getAttribute("aria-valuenow"), "2");
  assert.equal((await server("/deployments/" + created.id)).stage_awaits_approval, true);
  assert.equal(await page.locator("#main tbody tr").count(), 20, "the robots are still listed");
  // The README's picture (docs/dashboard.png), without an earlier step's notice on top.
  await page.evaluate(() => { document.querySelector("#flash").className = "flash"; document.querySelector("#flash").textContent = ""; });
  await page.screenshot({ path: join(ARTIFACTS, "dashboard.png") });
  await row.locator(`a[href='#/deployments/${created.id}']`).click();
  await page.waitForSelector("#deployment[data-state=running]");
});

test("approve from the deployments list", async () => {
  const id = remembered.canary4;
  await go("#/deployments");
  const approve = page.locator(`[data-deployment='${id}'] [data-action=approve]`);
  await approve.waitFor();
  // The same question as on the deployment's page; saying no changes nothing.
  let question = null;
  page.once("dialog", (dialog) => { question = dialog.message(); dialog.dismiss(); });
  await approve.click();
  assert.equal(question, `Approve deployment ${id}? Stage 2 of 2 starts: 15 more robot(s) get 4.0.0.`);
  await page.waitForTimeout(500);
  assert.equal((await server("/deployments/" + id)).current_stage, 0, "a dismissed approval does nothing");
  page.once("dialog", (dialog) => dialog.accept());
  await approve.click();
  await page.waitForSelector(`[data-deployment='${id}'] [data-stage='1']`);
  const done = await serverUntil("/deployments/" + id, "the rest of production", (d) => d.state !== "running");
  assert.equal(done.state, "succeeded");
  assert.equal(done.counts.committed, 17);
  assert.ok(done.log.some((e) => e.action === "approved" && e.actor.endsWith("(alice)")), JSON.stringify(done.log));
});

test("approve from the fleet overview", async () => {
  await asAdmin("PUT", "/environments/production", { groups: ["fleet"], approval_required: true });
  const gated = await asAdmin("POST", "/deployments", { release: "5.0.0", target: "env:production" });
  assert.equal(gated.state, "awaiting_approval");
  await go("#/fleet");
  const row = page.locator(`#fleet-rollouts [data-rollout='${gated.id}']`);
  await row.locator("[data-action=approve]").waitFor();
  assert.match(await row.innerText(), /awaiting approval/);
  assert.equal(await row.locator("[data-action]").count(), 1, "the overview offers approve, nothing else");
  let question = null;
  page.once("dialog", (dialog) => { question = dialog.message(); dialog.accept(); });
  await row.locator("[data-action=approve]").click();
  assert.equal(question, `Approve deployment ${gated.id}? 5.0.0 starts rolling out to env:production.`);
  // The row follows the rollout and leaves the overview when it ends.
  await row.waitFor({ state: "detached", timeout: LONG });
  const done = await server("/deployments/" + gated.id);
  assert.equal(done.state, "succeeded");
  assert.match(done.approved_by, /\(alice\)$/);
});

test("a deployer is not offered to approve their own deployment", async () => {
  // The server refuses it (another deployer must approve); the page says so instead.
  await fillDeployForm("3.0.0", { target: "env:production", strategy: "staged", percents: "50,100", wait_secs: "0" });
  await page.click("form.deploy-form button[type=submit]");
  await page.waitForURL(/#\/deployments\/dep_/);
  remembered.own = decodeURIComponent(page.url().split("#/deployments/")[1]);
  await page.waitForSelector("#deployment[data-state=awaiting_approval]");
  const own = remembered.own;
  for (const [hash, shown] of [["#/deployments/" + own, "#deployment"], ["#/deployments", `[data-deployment='${own}']`],
    ["#/fleet", `[data-rollout='${own}']`]]) {
    await go(hash);
    await page.waitForSelector(`${shown} [data-approval-note='${own}']`);
    assert.equal(await page.locator(`${shown} [data-action=approve]`).count(), 0, hash);
    assert.equal(await page.locator(`${shown} [data-action=abort]`).count(), hash === "#/fleet" ? 0 : 1, hash);
  }
  assert.equal((await server("/deployments/" + remembered.own)).state, "awaiting_approval");
});

test("the pages fit a phone and work from the keyboard", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [hash, name] of [["#/fleet", "13-phone-fleet"], ["#/deployments/" + remembered.canary, "14-phone-deployment"]]) {
    await go(hash);
    await page.waitForSelector("#main h1");
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${hash} scrolls sideways by ${overflow}px on a phone`);
    await shot(name, false); // what fits on the phone's screen
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  // A fresh load: the session cookie brings the page straight back, and Tab starts at the top.
  await page.goto(URL_ + "/#/fleet");
  await page.reload();
  await page.waitForSelector("#main h1");
  await page.keyboard.press("Tab");
  const first = await page.evaluate(() => document.activeElement.outerHTML.slice(0, 120));
  assert.match(first, /class="skip"/, "the first Tab stop is the skip link");
  // Brand, then Fleet, then Deployments.
  for (let i = 0; i < 3; i++) await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Deployments");
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/deployments$/);
  await page.waitForSelector(".timeline-list");
});

test("a viewer sees no action buttons", async () => {
  await page.click("#logout");
  await page.waitForSelector("#login:not([hidden])");
  await logIn(VIEWER_KEY);
  assert.match(await page.textContent("#who"), /victor \(viewer\)/);
  for (const hash of ["#/fleet", "#/deployments", "#/deployments/" + remembered.canary, "#/releases", "#/robots/robot-002"]) {
    await go(hash);
    await page.waitForSelector("#main h1");
    await page.waitForSelector("#main table, #main .timeline-list");
    assert.equal(await page.locator("[data-action]").count(), 0, `${hash} shows actions to a viewer`);
  }
  // Alice's deployment still awaits approval: the viewer sees it, and no way to approve it.
  await go("#/fleet");
  await page.waitForSelector(`#fleet-rollouts [data-rollout='${remembered.own}']`);
  assert.equal(await page.locator("[data-approval-note]").count(), 0);
  await go("#/deployments/" + remembered.canary);
  await page.waitForSelector("#deployment[data-state=halted]");
  await shot("15-viewer-deployment");
});

test("the server refuses forged action requests and nothing changes", async () => {
  const retry = `/ui/api/deployments/${encodeURIComponent(remembered.canary)}/retry`;

  // The viewer's own page, with its own valid CSRF token: the role is not enough.
  const asViewer = await page.evaluate(async (path) => {
    const session = await (await fetch("/ui/session")).json();
    const response = await fetch(path, { method: "POST", headers: { "X-CSRF-Token": session.csrf_token } });
    return response.status;
  }, retry);
  assert.equal(asViewer, 403);

  // A deployer's browser, logged in, but the request carries no or a wrong CSRF token.
  const deployerContext = await browser.newContext();
  const deployerPage = await deployerContext.newPage();
  await deployerPage.goto(URL_ + "/");
  await deployerPage.fill("#api-key", DEPLOYER_KEY);
  await deployerPage.click("#login-form button[type=submit]");
  await deployerPage.waitForSelector("#app:not([hidden])");
  const forged = await deployerPage.evaluate(async (path) => {
    const none = await fetch(path, { method: "POST" });
    const wrong = await fetch(path, { method: "POST", headers: { "X-CSRF-Token": "0".repeat(64) } });
    return [none.status, wrong.status];
  }, retry);
  assert.deepEqual(forged, [403, 403]);

  // Another site's page posting a form at the server in the deployer's browser: refused for
  // its Origin (and the SameSite=Strict cookie does not even go along).
  await deployerContext.route("http://evil.test/**", (route) => route.fulfill({
    contentType: "text/html",
    body: `<form id="f" method="POST" action="${URL_}${retry}"></form><script>document.getElementById("f").submit()</script>`,
  }));
  const evil = await deployerContext.newPage();
  const answered = evil.waitForResponse((response) => response.url().endsWith("/retry"));
  await evil.goto("http://evil.test/attack");
  assert.equal((await answered).status(), 403);
  await deployerContext.close();

  const after = await server("/deployments/" + remembered.canary);
  assert.equal(after.state, "halted", "the forged retries changed nothing");
  const retries = (await server("/audit?action=deployment.retry")).length;
  assert.equal(retries, 0, "no retry was audited");
  await shot("16-after-forgeries");
});

test("an app release deploys from the releases page and rolls back from its deployment and a robot's page", async () => {
  await page.click("#logout");
  await page.waitForSelector("#login:not([hidden])");
  await logIn(DEPLOYER_KEY);
  const osVersions = async () => Object.fromEntries((await server("/robots")).map((r) => [r.id, r.version]));
  const osBefore = await osVersions();
  const canaries = ["robot-001", "robot-002", "robot-003"];
  const navOn = (robots, version) => canaries.every((id) =>
    (robots.find((r) => r.id === id).inventory?.apps || []).some((a) => a.name === "nav" && a.version === version));
  for (const version of ["0.4.0", "0.5.0"]) {
    await fillDeployForm(version, { target: "group:canary", strategy: "immediate" }, "nav");
    assert.equal(await page.textContent("form.deploy-form h3"), "Deploy nav " + version);
    await page.click("form.deploy-form button[type=submit]");
    await page.waitForURL(/#\/deployments\/dep_/);
    await page.waitForSelector("#deployment[data-state=succeeded]", { timeout: LONG });
    assert.match(await page.textContent("#main h1"), new RegExp("^Deployment of nav " + version.replaceAll(".", "\\.")));
    await serverUntil("/robots", "the canaries running nav " + version, (robots) => navOn(robots, version));
  }
  await shot("17-app-deployment");

  // The deployment's Roll back sends its robots to the nav release before, not their OS.
  const deployed = decodeURIComponent(page.url().split("#/deployments/")[1]);
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("[data-action=rollback]");
  await page.waitForURL((url) => !url.href.endsWith(deployed));
  const rollbackId = decodeURIComponent(page.url().split("#/deployments/")[1]);
  await page.waitForSelector("#deployment[data-state=succeeded]", { timeout: LONG });
  const rollback = await server("/deployments/" + rollbackId);
  assert.equal(rollback.kind, "rollback");
  assert.equal(rollback.app, "nav");
  assert.equal(rollback.version, "0.4.0");
  await serverUntil("/robots", "the canaries back on nav 0.4.0", (robots) => navOn(robots, "0.4.0"));
  assert.deepEqual(await osVersions(), osBefore, "an app rollback moved a robot's OS");

  // A robot's page lists its apps and switches one to another release it keeps (here newer).
  await go("#/robots/robot-002");
  await page.waitForSelector("[data-app-version=nav]:text-is('0.4.0')", { timeout: LONG });
  await page.selectOption("[data-app-rollback-to=nav]", "0.5.0");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("[data-action=rollback-app][data-app=nav]");
  await page.waitForSelector("#robot-app-rollback-result:not(:empty)");
  assert.match(await page.textContent("#robot-app-rollback-result"), /^Switching nav to 0\.5\.0/);
  await page.waitForSelector("[data-app-version=nav]:text-is('0.5.0')", { timeout: LONG });
  // The app's releases have their own history; the OS's lists no app release.
  const osRuns = await page.locator("section:has(h2:text-is('Releases it ran')) tbody td:first-child").allTextContents();
  assert.ok(osRuns.length > 0 && osRuns.every((v) => !v.startsWith("0.")), JSON.stringify(osRuns));
  assert.ok(!(await page.locator("#robot-rollback-to option").allTextContents()).some((v) => v.startsWith("0.")),
    "the OS rollback offers an app version");
  await page.waitForSelector("section:has(h2:text-is('App releases it ran')) td:text-is('nav')");
  await shot("18-robot-app-rolled-back");
  assert.deepEqual(await osVersions(), osBefore, "an app rollback moved a robot's OS");
});

test("the notifications page lists channels without secrets and sends a test", async () => {
  await go("#/notifications");
  await page.waitForSelector("[data-channel=ops]");
  const text = await page.textContent("#main");
  assert.ok(!text.includes("a-secret-of-16-chars"), "a channel's secret on the page");
  // Everything this fleet did so far went to the channel and was delivered.
  await page.waitForSelector("[data-delivery]:text-is('delivered')", { timeout: LONG });
  await page.click("button[data-action=test-channel][data-channel=ops]");
  await page.waitForSelector("td:has(code:text-is('test')) ~ td [data-delivery]:text-is('delivered')", { timeout: LONG });
  const log = await server("/notifications/deliveries?channel=ops&limit=1000");
  assert.ok(log.some((d) => d.event === "test" && d.state === "delivered"), JSON.stringify(log.slice(0, 3)));
  assert.ok(log.some((d) => d.event === "deployment.halted"), "the canary's halt was announced");
  await shot("19-notifications");
});
