//! Read-mostly views: status, deployments, robots, groups.

use std::io::IsTerminal as _;

use reqwest::Method;
use rota_protocol::operator::{Deployment, FleetStatus, Group, Robot};

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
            "  {} v{} to {}: {}",
            d.id,
            d.version,
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
                "{} v{} to {} ({}): {}",
                d.id,
                d.version,
                d.target,
                crate::commands::deploy::state_text(d.state),
                counts_text(&d.counts)
            );
            for r in d.robots.iter().flatten() {
                let line = if r.state.is_final() {
                    finished_line(
                        &r.robot_id,
                        &d.version,
                        r.state,
                        r.finished_after_secs,
                        r.detail.as_deref(),
                    )
                } else {
                    format!(
                        "… {} v{} {}{}",
                        r.robot_id,
                        d.version,
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
                        format!("v{}", d.version),
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

fn show_robot(robot: &Robot) -> anyhow::Result<()> {
    outln!("{} ({}) {}", robot.id, robot.compatible, robot.state);
    outln!("  version: {}", or_dash(robot.version.as_deref()));
    outln!("  groups: {}", robot.groups.join(", "));
    outln!(
        "  enrolled: {}, last seen: {}",
        output::time(&robot.enrolled_at),
        robot.last_seen.as_deref().map_or("-".into(), output::time)
    );
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
                vec![
                    r.id.clone(),
                    or_dash(r.version.as_deref()),
                    state,
                    r.groups.join(","),
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
                &["GROUP", "ROBOTS", "MEMBERS"],
                "no groups yet: create one with `rota groups create NAME`, then \
                 `rota groups add NAME ROBOT...`",
                |g: &Group| {
                    vec![
                        g.name.clone(),
                        g.robots.len().to_string(),
                        g.robots.join(","),
                    ]
                },
            )?;
        }
        Some(GroupsCommand::Create { name }) => {
            let group: Group =
                api.send_json::<(), _>(Method::PUT, &format!("/groups/{name}"), None)?;
            note!(
                "group {} has {}",
                group.name,
                output::count(group.robots.len(), "robot", "robots")
            );
            if json {
                return output::json(&group);
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
