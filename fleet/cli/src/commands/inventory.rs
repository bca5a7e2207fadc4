//! Read-mostly views: status, deployments, robots, groups.

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
    println!("robots: {}", status.robots);
    println!("  by state:   {}", counts_text(&status.robots_by_state));
    println!("  by version: {}", counts_text(&status.robots_by_version));
    println!("releases: {}", status.releases);
    println!("running deployments: {}", status.running_deployments.len());
    for d in &status.running_deployments {
        println!(
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
            println!(
                "{} v{} to {} ({}): {}",
                d.id,
                d.version,
                d.target,
                d.state.as_str(),
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
                println!("  {line}");
            }
        }
        None => {
            let headers = ["ID", "VERSION", "TARGET", "STATE", "ROBOTS", "CREATED"];
            show_list(api, "/deployments", json, &headers, |d: &Deployment| {
                vec![
                    d.id.clone(),
                    format!("v{}", d.version),
                    d.target.to_string(),
                    d.state.as_str().into(),
                    counts_text(&d.counts),
                    d.created_at.clone(),
                ]
            })?;
        }
    }
    Ok(())
}

fn show_robot(robot: &Robot) {
    println!("{} ({}) {}", robot.id, robot.compatible, robot.state);
    println!("  version: {}", or_dash(robot.version.as_deref()));
    println!("  groups: {}", robot.groups.join(", "));
    println!(
        "  enrolled: {}, last seen: {}",
        robot.enrolled_at,
        or_dash(robot.last_seen.as_deref())
    );
    if let Some(slots) = &robot.slots {
        for slot in &slots.slots {
            let booted = if slot.slot == slots.booted {
                " (booted)"
            } else {
                ""
            };
            println!(
                "  slot {:?}{booted}: {} {}",
                slot.slot,
                or_dash(slot.version.as_deref()),
                slot.state
            );
        }
    }
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
            show_list(api, &path, json, &headers, |r: &Robot| {
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
                    or_dash(r.last_seen.as_deref()),
                ]
            })?;
        }
        Some(RobotsCommand::Show { id }) => {
            let robot: Robot = api.get(&format!("/robots/{id}"))?;
            if json {
                return output::json(&robot);
            }
            show_robot(&robot);
        }
        Some(RobotsCommand::Approve { id }) => {
            let robot: Robot =
                api.send_json::<(), _>(Method::POST, &format!("/robots/{id}/approve"), None)?;
            eprintln!("approved {}", robot.id);
            if json {
                return output::json(&robot);
            }
        }
        Some(RobotsCommand::Remove { id }) => {
            api.send_empty(Method::DELETE, &format!("/robots/{id}"))?;
            eprintln!("removed {id}; it may enroll again");
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
            eprintln!("group {} has {} robots", group.name, group.robots.len());
            if json {
                return output::json(&group);
            }
        }
        Some(GroupsCommand::Delete { name }) => {
            api.send_empty(Method::DELETE, &format!("/groups/{name}"))?;
            eprintln!("deleted group {name}");
        }
        Some(GroupsCommand::Add { name, robots }) => {
            for robot in robots {
                api.send_empty(Method::PUT, &format!("/groups/{name}/robots/{robot}"))?;
                eprintln!("{robot} is in {name}");
            }
        }
        Some(GroupsCommand::Remove { name, robots }) => {
            for robot in robots {
                api.send_empty(Method::DELETE, &format!("/groups/{name}/robots/{robot}"))?;
                eprintln!("{robot} left {name}");
            }
        }
    }
    Ok(())
}
