//! Read-mostly views: status, deployments, robots (with their inventory and tags), groups.

use std::io::IsTerminal as _;

use reqwest::Method;
use rota_protocol::operator::{Deployment, FleetStatus, Group, GroupQuery, Robot, TagsRequest};
use rota_protocol::robot::Inventory;

use crate::cli::{GroupsCommand, RobotsCommand};
use crate::client::Api;
use crate::commands::deploy::finished_line;
use crate::commands::show_list;
use crate::output::{self, or_dash};

fn counts_text(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn status(api: &Api, json: bool) -> anyhow::Result<()> {
    let status: FleetStatus = api.get("/status")?;
    if json {
        return output::json(&status);
    }
    print_status(&status)
}

/// `rota status --watch`: on a terminal the screen is redrawn every `every`; into a pipe or a
/// file the status is printed again only when it changed (one JSON line each with --json), so
/// a log of it holds no control characters and no repeats. A failed poll after the first is
/// reported and retried: a watch outlives a server restart.
pub fn watch_status(api: &Api, every: std::time::Duration, json: bool) -> anyhow::Result<()> {
    let redraw = !json && std::io::stdout().is_terminal();
    let mut last: Option<serde_json::Value> = None;
    loop {
        match api.get::<FleetStatus>("/status") {
            Ok(status) => {
                let value = serde_json::to_value(&status)?;
                let at = output::now_text();
                if redraw {
                    // Home and clear, then the whole status: one frame per poll.
                    outln!(
                        "\x1b[H\x1b[2J{at}  (every {}; Ctrl-C stops)",
                        output::duration(every)
                    );
                    print_status(&status)?;
                } else if last.as_ref() != Some(&value) {
                    if json {
                        outln!("{}", serde_json::to_string(&value)?);
                    } else {
                        outln!("-- {at}");
                        print_status(&status)?;
                    }
                }
                last = Some(value);
            }
            Err(err) if last.is_some() => {
                crate::ErrorReport::of(&err.context("retrying"), crate::EXIT_ERROR).print(json)
            }
            Err(err) => return Err(err),
        }
        if output::stdout_closed() {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

fn print_status(status: &FleetStatus) -> anyhow::Result<()> {
    outln!("robots: {}", status.robots);
    outln!("  by state:   {}", counts_text(&status.robots_by_state));
    outln!("  by version: {}", counts_text(&status.robots_by_version));
    outln!("releases: {}", status.releases);
    outln!("running deployments: {}", status.running_deployments.len());
    for d in &status.running_deployments {
        outln!(
            "  {} {} to {}: {}",
            d.id,
            d.release_label(),
            d.target,
            counts_text(&d.counts)
        );
    }
    Ok(())
}

pub fn deployments(api: &Api, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    match id {
        Some(id) => {
            let d: Deployment = api.get(&format!("/deployments/{id}"))?;
            if json {
                return output::json(&d);
            }
            outln!(
                "{} {} to {} ({}): {}",
                d.id,
                d.release_label(),
                d.target,
                crate::commands::deploy::state_text(d.state),
                counts_text(&d.counts)
            );
            for r in d.robots.iter().flatten() {
                let line = if r.state.is_final() {
                    finished_line(
                        &r.robot_id,
                        &d.release_label(),
                        r.state,
                        r.finished_after_secs,
                        r.detail.as_deref(),
                    )
                } else {
                    format!(
                        "… {} {} {}{}",
                        r.robot_id,
                        d.release_label(),
                        r.state,
                        r.detail
                            .as_deref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    )
                };
                outln!("  {line}");
            }
        }
        None => {
            let headers = ["ID", "VERSION", "TARGET", "STATE", "ROBOTS", "CREATED"];
            let empty = "no deployments yet: send a release with `rota deploy VERSION --to all`";
            show_list(
                api,
                "/deployments",
                json,
                &headers,
                empty,
                |d: &Deployment| {
                    vec![
                        d.id.clone(),
                        d.release_label(),
                        d.target.to_string(),
                        d.state.as_str().into(),
                        counts_text(&d.counts),
                        output::ago(&d.created_at),
                    ]
                },
            )?;
        }
    }
    Ok(())
}

/// One word for how the robot is doing, from what the server knows.
fn health(robot: &Robot) -> &'static str {
    match robot.state.as_str() {
        _ if !robot.approved => "waiting for approval",
        "idle" => "ok",
        "rolled_back" | "failed" => "needs attention",
        _ => "updating",
    }
}

/// `a, b, c`, or `-` for none.
fn joined(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// At most `max` characters, with an ellipsis when cut: list columns stay narrow.
fn compact(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// `Debian 12` for `Debian GNU/Linux 12 (bookworm)` with VERSION_ID 12.
fn os_short(inventory: &Inventory) -> String {
    match (&inventory.os, &inventory.os_version) {
        (Some(os), Some(version)) => {
            let name = os.split_whitespace().next().unwrap_or(os);
            format!("{name} {version}")
        }
        (Some(os), None) => compact(os, 20),
        (None, version) => or_dash(version.as_deref()),
    }
}

fn disk_text(disk: &rota_protocol::robot::DiskInfo) -> String {
    let mut parts = Vec::new();
    for (name, bytes) in [("slot A", disk.slot_a_bytes), ("slot B", disk.slot_b_bytes)] {
        if let Some(bytes) = bytes {
            parts.push(format!("{name} {}", output::size(bytes)));
        }
    }
    match (disk.data_bytes, disk.data_free_bytes) {
        (Some(size), Some(free)) => parts.push(format!(
            "data {} ({} free)",
            output::size(size),
            output::size(free)
        )),
        (Some(size), None) => parts.push(format!("data {}", output::size(size))),
        (None, Some(free)) => parts.push(format!("data {} free", output::size(free))),
        (None, None) => {}
    }
    joined(&parts)
}

fn show_inventory(robot: &Robot) -> anyhow::Result<()> {
    let Some(inventory) = &robot.inventory else {
        outln!("  inventory: not reported yet (robots older than the inventory never report one)");
        return Ok(());
    };
    let os = match (&inventory.os, &inventory.os_version) {
        (Some(os), Some(version)) if !os.contains(version.as_str()) => {
            format!("{os} (version {version})")
        }
        (Some(os), _) => os.clone(),
        (None, version) => or_dash(version.as_deref()),
    };
    outln!("  board: {}", or_dash(inventory.board.as_deref()));
    outln!("  os: {os}");
    outln!("  kernel: {}", or_dash(inventory.kernel.as_deref()));
    outln!("  addresses: {}", joined(&inventory.addresses));
    outln!(
        "  disk: {}",
        inventory.disk.as_ref().map_or("-".into(), disk_text)
    );
    if !inventory.apps.is_empty() {
        let apps: Vec<String> = inventory.apps.iter().map(app_text).collect();
        outln!("  apps: {}", apps.join(", "));
    }
    if let Some(at) = &robot.inventory_at {
        outln!("  inventory changed: {}", output::time(at));
    }
    Ok(())
}

/// `nav 1.4.0 (abc123; kept 1.3.0 1.4.0)`, and the last activation when it did not succeed.
fn app_text(app: &rota_protocol::robot::AppInventory) -> String {
    let mut facts = Vec::new();
    if let Some(commit) = &app.git_commit {
        facts.push(commit.chars().take(12).collect::<String>());
    }
    if !app.kept.is_empty() {
        facts.push(format!("kept {}", app.kept.join(" ")));
    }
    if let Some(last) = app
        .last
        .as_ref()
        .filter(|last| !last.starts_with("activated"))
    {
        facts.push(format!("last: {last}"));
    }
    let mut text = format!(
        "{} {}",
        app.name,
        app.version.as_deref().unwrap_or("(no current release)")
    );
    if !facts.is_empty() {
        text.push_str(&format!(" ({})", facts.join("; ")));
    }
    text
}

fn tags_text(robot: &Robot) -> String {
    let robot_tags = robot
        .inventory
        .as_ref()
        .map(|inventory| &inventory.tags)
        .filter(|tags| !tags.is_empty());
    let mut parts: Vec<String> = robot
        .tags
        .iter()
        .map(|(name, value)| format!("{name}={value} (operator)"))
        .collect();
    for (name, value) in robot_tags.into_iter().flatten() {
        let overridden = if robot.tags.contains_key(name) {
            ", overridden"
        } else {
            ""
        };
        parts.push(format!("{name}={value} (robot{overridden})"));
    }
    joined(&parts)
}

fn show_robot(robot: &Robot) -> anyhow::Result<()> {
    outln!("{} ({}) {}", robot.id, robot.compatible, robot.state);
    outln!(
        "  health: {}, last seen {}",
        health(robot),
        robot
            .last_seen
            .as_deref()
            .map_or("never".into(), output::time)
    );
    if let Some(failure) = &robot.last_failure {
        let what = failure.event.replace('_', " ");
        let version = failure
            .version
            .as_deref()
            .map(|v| format!(" v{v}"))
            .unwrap_or_default();
        let detail = failure
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        outln!(
            "  last failure: {what}{version} at {}{detail}",
            output::time(&failure.at)
        );
    }
    outln!("  version: {}", or_dash(robot.version.as_deref()));
    outln!("  groups: {}", joined(&robot.groups));
    outln!("  tags: {}", tags_text(robot));
    show_inventory(robot)?;
    outln!("  enrolled: {}", output::time(&robot.enrolled_at));
    if let Some(slots) = &robot.slots {
        for slot in &slots.slots {
            let booted = if slot.slot == slots.booted {
                " (booted)"
            } else {
                ""
            };
            let slot_name = match slot.slot {
                rota_protocol::robot::Slot::A => "A",
                rota_protocol::robot::Slot::B => "B",
            };
            outln!(
                "  slot {slot_name}{booted}: {} {}",
                slot.version
                    .as_deref()
                    .map_or("unknown version".into(), |v| format!("v{v}")),
                slot.state
            );
        }
    }
    Ok(())
}

pub fn robots(
    api: &Api,
    action: Option<RobotsCommand>,
    group: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => {
            let path = match group {
                Some(group) => format!("/robots?group={group}"),
                None => "/robots".to_string(),
            };
            let headers = [
                "ID",
                "VERSION",
                "STATE",
                "GROUPS",
                "BOARD",
                "OS",
                "COMPATIBLE",
                "LAST SEEN",
            ];
            let empty = match group {
                Some(group) => format!(
                    "no robots in group {group}: add some with `rota groups add {group} ROBOT...`"
                ),
                None => "no robots enrolled yet: a robot enrolls itself with the fleet's \
                         enrollment key when its rota-updater daemon first starts"
                    .to_string(),
            };
            show_list(api, &path, json, &headers, &empty, |r: &Robot| {
                let state = match r.progress {
                    Some(p) => format!("{} {p}%", r.state),
                    None => r.state.clone(),
                };
                let inventory = r.inventory.as_ref();
                vec![
                    r.id.clone(),
                    or_dash(r.version.as_deref()),
                    state,
                    r.groups.join(","),
                    inventory
                        .and_then(|i| i.board.as_deref())
                        .map_or("-".into(), |board| compact(board, 24)),
                    inventory.map_or("-".into(), os_short),
                    r.compatible.clone(),
                    r.last_seen.as_deref().map_or("-".into(), output::ago),
                ]
            })?;
        }
        Some(RobotsCommand::Show { id }) => {
            let robot: Robot = api.get(&format!("/robots/{id}"))?;
            if json {
                return output::json(&robot);
            }
            show_robot(&robot)?;
        }
        Some(RobotsCommand::Tag { id, tags, remove }) => {
            let request = TagsRequest {
                set: tags.into_iter().collect(),
                remove,
            };
            if request.set.is_empty() && request.remove.is_empty() {
                anyhow::bail!("name tags to set (NAME=VALUE) or to remove (--remove NAME)");
            }
            let robot: Robot =
                api.send_json(Method::PATCH, &format!("/robots/{id}/tags"), Some(&request))?;
            note!("{}: {}", robot.id, tags_text(&robot));
            if json {
                return output::json(&robot);
            }
        }
        Some(RobotsCommand::Approve { id }) => {
            let robot: Robot =
                api.send_json::<(), _>(Method::POST, &format!("/robots/{id}/approve"), None)?;
            note!("approved {}", robot.id);
            if json {
                return output::json(&robot);
            }
        }
        Some(RobotsCommand::Remove { id }) => {
            api.send_empty(Method::DELETE, &format!("/robots/{id}"))?;
            note!("removed {id}; it may enroll again");
        }
    }
    Ok(())
}

pub fn groups(api: &Api, action: Option<GroupsCommand>, json: bool) -> anyhow::Result<()> {
    match action {
        None => {
            show_list(
                api,
                "/groups",
                json,
                &["GROUP", "ROBOTS", "MEMBERS", "QUERY"],
                "no groups yet: create one with `rota groups create NAME`, then \
                 `rota groups add NAME ROBOT...`, or a dynamic one with \
                 `rota groups create NAME --query QUERY`",
                |g: &Group| {
                    vec![
                        g.name.clone(),
                        g.robots.len().to_string(),
                        g.robots.join(","),
                        or_dash(g.query.as_deref()),
                    ]
                },
            )?;
        }
        Some(GroupsCommand::Create { name, query }) => {
            let group: Group = match query {
                Some(query) => api.send_json(
                    Method::PUT,
                    &format!("/groups/{name}/query"),
                    Some(&GroupQuery { query }),
                )?,
                None => api.send_json::<(), _>(Method::PUT, &format!("/groups/{name}"), None)?,
            };
            note!(
                "group {} has {}{}",
                group.name,
                output::count(group.robots.len(), "robot", "robots"),
                if group.query.is_some() {
                    " matching its query now"
                } else {
                    ""
                }
            );
            if json {
                return output::json(&group);
            }
        }
        Some(GroupsCommand::Show { name }) => {
            let group: Group = api.get(&format!("/groups/{name}"))?;
            if json {
                return output::json(&group);
            }
            match &group.query {
                Some(query) => {
                    outln!("{} (dynamic): {query}", group.name);
                    outln!(
                        "  {} matching now; a deployment reaches those matching when it is created",
                        output::count(group.robots.len(), "robot", "robots")
                    );
                }
                None => outln!(
                    "{}: {}",
                    group.name,
                    output::count(group.robots.len(), "robot", "robots")
                ),
            }
            for robot in &group.robots {
                outln!("  {robot}");
            }
        }
        Some(GroupsCommand::Delete { name }) => {
            api.send_empty(Method::DELETE, &format!("/groups/{name}"))?;
            note!("deleted group {name}");
        }
        Some(GroupsCommand::Add { name, robots }) => {
            for robot in robots {
                api.send_empty(Method::PUT, &format!("/groups/{name}/robots/{robot}"))?;
                note!("{robot} is in {name}");
            }
        }
        Some(GroupsCommand::Remove { name, robots }) => {
            for robot in robots {
                api.send_empty(Method::DELETE, &format!("/groups/{name}/robots/{robot}"))?;
                note!("{robot} left {name}");
            }
        }
    }
    Ok(())
}
