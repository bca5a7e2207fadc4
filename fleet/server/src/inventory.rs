//! Robot facts (inventory, operator tags) and the dynamic groups evaluated over them.
//!
//! A dynamic group stores its query, never its members: membership is worked out from the
//! facts whenever it is asked for (a deployment being created, `groups show`, a robot read),
//! so it is always the current one and no write path has to keep a copy up to date. A
//! deployment to a dynamic group reaches the robots that match when it is created; robots that
//! match later wait for the next deployment, as with an explicit robot list.

use std::collections::{BTreeMap, HashMap};

use rota_protocol::robot::Inventory;
use sqlx::AnyConnection;

use crate::error::{ApiError, ApiResult};
use crate::query::{Facts, Query};

/// One robot as queries see it.
#[derive(Debug, Clone)]
pub struct RobotFacts {
    pub id: String,
    pub compatible: String,
    pub approved: bool,
    pub version: Option<String>,
    pub state: String,
    pub inventory: Option<Inventory>,
    /// Operator tags.
    pub tags: BTreeMap<String, String>,
}

impl RobotFacts {
    pub fn facts(&self) -> Facts<'_> {
        Facts {
            id: &self.id,
            compatible: &self.compatible,
            version: self.version.as_deref(),
            state: &self.state,
            inventory: self.inventory.as_ref(),
            tags: &self.tags,
        }
    }
}

/// A stored inventory; one the server cannot read (written by a newer server that changed its
/// shape) counts as none rather than failing every robot listing.
pub fn parse_inventory(json: Option<&str>) -> Option<Inventory> {
    json.and_then(|json| serde_json::from_str(json).ok())
}

/// Operator tags of every robot (`None`) or of one.
pub async fn operator_tags(
    conn: &mut AnyConnection,
    robot_id: Option<&str>,
) -> ApiResult<HashMap<String, BTreeMap<String, String>>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT robot_id, name, value FROM robot_tags WHERE ($1 = '' OR robot_id = $2)
         ORDER BY robot_id, name",
    )
    .bind(robot_id.unwrap_or_default())
    .bind(robot_id.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let mut tags: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for (robot, name, value) in rows {
        tags.entry(robot).or_default().insert(name, value);
    }
    Ok(tags)
}

/// The facts of every robot (`None`) or of one, ordered by id.
pub async fn facts(conn: &mut AnyConnection, robot_id: Option<&str>) -> ApiResult<Vec<RobotFacts>> {
    type Row = (String, String, i64, Option<String>, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, compatible, approved, version, state, inventory_json FROM robots
         WHERE ($1 = '' OR id = $2) ORDER BY id",
    )
    .bind(robot_id.unwrap_or_default())
    .bind(robot_id.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let mut tags = operator_tags(conn, robot_id).await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, compatible, approved, version, state, inventory)| RobotFacts {
                tags: tags.remove(&id).unwrap_or_default(),
                inventory: parse_inventory(inventory.as_deref()),
                id,
                compatible,
                approved: approved != 0,
                version,
                state,
            },
        )
        .collect())
}

/// A stored query; one that no longer parses (a newer server's grammar) is a server fault
/// that must not silently match nobody.
pub fn parse_stored(name: &str, text: &str) -> ApiResult<Query> {
    Query::parse(text).map_err(|error| {
        ApiError::internal(format_args!("group {name}: stored query {text:?}: {error}"))
    })
}

/// Every dynamic group with its parsed query, by name.
pub async fn dynamic_groups(conn: &mut AnyConnection) -> ApiResult<Vec<(String, Query)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, member_query FROM robot_groups WHERE member_query IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(name, text)| {
            let query = parse_stored(&name, &text)?;
            Ok((name, query))
        })
        .collect()
}

/// Whether the group exists, and its query when it is dynamic.
pub async fn group_kind(conn: &mut AnyConnection, name: &str) -> ApiResult<Option<Option<Query>>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT name, member_query FROM robot_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(name, text)| text.map(|text| parse_stored(&name, &text)).transpose())
        .transpose()
}

/// The robots `query` matches now, ordered by id.
pub async fn matching(conn: &mut AnyConnection, query: &Query) -> ApiResult<Vec<RobotFacts>> {
    Ok(facts(conn, None)
        .await?
        .into_iter()
        .filter(|robot| query.matches(&robot.facts()))
        .collect())
}

/// Whether `robot_id` is in group `name`, dynamic or not.
pub async fn group_contains(
    conn: &mut AnyConnection,
    name: &str,
    robot_id: &str,
) -> ApiResult<bool> {
    if let Some(Some(query)) = group_kind(conn, name).await? {
        return Ok(facts(conn, Some(robot_id))
            .await?
            .iter()
            .any(|robot| query.matches(&robot.facts())));
    }
    let found: Option<String> = sqlx::query_scalar(
        "SELECT robot_id FROM group_members WHERE group_name = $1 AND robot_id = $2",
    )
    .bind(name)
    .bind(robot_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}
