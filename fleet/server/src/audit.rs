//! The append-only audit log: every mutating operator call writes one row in the same
//! transaction as its change, so there is no change without its record. The schema's
//! triggers refuse UPDATE and DELETE on the table.

use sqlx::AnyConnection;

use crate::auth::Operator;
use crate::time::now_ms;

/// One action to record. `details` must never hold a secret.
pub struct Record<'a> {
    pub actor: String,
    pub action: &'a str,
    pub target: Option<String>,
    pub details: Option<serde_json::Value>,
    pub source_ip: Option<String>,
}

impl<'a> Record<'a> {
    pub fn by(operator: &Operator, action: &'a str, target: impl Into<String>) -> Self {
        Record {
            actor: operator.actor(),
            action,
            target: Some(target.into()),
            details: None,
            source_ip: operator.source_ip.clone(),
        }
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub async fn write(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, details, source_ip)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(self.actor)
        .bind(self.action)
        .bind(self.target)
        .bind(self.details.map(|d| d.to_string()))
        .bind(self.source_ip)
        .execute(conn)
        .await?;
        Ok(())
    }
}
