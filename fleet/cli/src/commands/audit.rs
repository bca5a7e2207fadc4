//! audit: the append-only audit log, filtered by time, actor and action.

use rota_protocol::operator::AuditEntry;

use crate::client::Api;
use crate::commands::show_filtered_list;
use crate::output::{self, or_dash};
use crate::when::When;

#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<When>,
    pub until: Option<When>,
    pub actor: Option<String>,
    pub action: Option<String>,
}

pub fn audit(api: &Api, filter: &Filter, limit: u32, json: bool) -> anyhow::Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(since) = filter.since {
        query.push(("since", since.rfc3339()));
    }
    if let Some(until) = filter.until {
        query.push(("until", until.rfc3339()));
    }
    if let Some(actor) = &filter.actor {
        query.push(("actor", actor.clone()));
    }
    if let Some(action) = &filter.action {
        query.push(("action", action.clone()));
    }
    let headers = ["AT", "ACTOR", "ACTION", "TARGET", "FROM"];
    let empty = "no audit entries match (every operator action, enrollment and webhook delivery lands here)";
    show_filtered_list(
        api,
        "/audit",
        &query,
        json,
        &headers,
        empty,
        |e: &AuditEntry| {
            vec![
                output::time(&e.at),
                e.actor.clone(),
                e.action.clone(),
                or_dash(e.target.as_deref()),
                or_dash(e.source_ip.as_deref()),
            ]
        },
    )
}
