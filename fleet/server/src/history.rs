//! Release history: which releases each robot ran, from when, how it got each one and how each
//! run ended, rebuilt from what robots reported.
//!
//! Three sources, merged in time order per robot:
//! - `robot_events` of deployments: `trial` (the robot booted the release) and `committed`
//!   start or confirm a run; `rolled_back` and `failed` after a boot end it, and the robot is
//!   back on the release it ran before;
//! - `robot_version_reports`: a slot report naming a running version the server did not know
//!   the robot ran. When no deployment explains it, it is a local install (factory image,
//!   manual install).
//! - `deployments`, for who created the deployment that gave a release.
//!
//! Each robot has one timeline per track: its OS, and each app (app releases run beside the
//! OS, so an app's commit neither replaces the OS release nor another app's). Slot reports are
//! about the OS only.
//!
//! A slot report and the event it goes with may arrive in either order (the robot's outbox
//! retries events after a reboot), so [`Timeline`] re-labels a local-install run that a
//! deployment's event explains right after.

use std::collections::BTreeMap;

use rota_protocol::operator::{ReleaseRun, RobotReleaseHistory, RunEnd, RunOrigin};
use sqlx::AnyConnection;

use crate::time::rfc3339;

/// Records `running` when it is not the version the server knows the robot runs. Call before
/// storing the slot report.
pub async fn note_reported_version(
    conn: &mut AnyConnection,
    robot_id: &str,
    running: Option<&str>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let Some(running) = running else {
        return Ok(());
    };
    let known: Option<(Option<String>, String)> =
        sqlx::query_as("SELECT version, compatible FROM robots WHERE id = $1")
            .bind(robot_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((known_version, compatible)) = known else {
        return Ok(());
    };
    if known_version.as_deref() == Some(running) {
        return Ok(());
    }
    let release_id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM releases WHERE compatible = $1 AND version = $2 AND app IS NULL",
    )
    .bind(&compatible)
    .bind(running)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO robot_version_reports (robot_id, version, release_id, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(robot_id)
    .bind(running)
    .bind(release_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The deployment a release came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentInfo {
    pub id: String,
    pub kind: Option<String>,
    pub created_by: String,
}

/// A robot's report about a deployed release that matters to history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Trial,
    Committed,
    RolledBack,
    Failed,
}

impl Step {
    fn parse(event: &str) -> Option<Step> {
        match event {
            "trial" => Some(Step::Trial),
            "committed" => Some(Step::Committed),
            "rolled_back" => Some(Step::RolledBack),
            "failed" => Some(Step::Failed),
            _ => None,
        }
    }
}

/// One thing that happened to a robot, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Deployed {
        deployment: DeploymentInfo,
        release_id: String,
        version: String,
        step: Step,
        detail: Option<String>,
    },
    Reported {
        version: String,
        release_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Running,
    Replaced { by_version: String, at: i64 },
    RolledBack { reason: String, at: i64 },
    Failed { error: String, at: i64 },
}

impl End {
    fn at(&self) -> Option<i64> {
        match self {
            End::Running => None,
            End::Replaced { at, .. } | End::RolledBack { at, .. } | End::Failed { at, .. } => {
                Some(*at)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    version: String,
    release_id: Option<String>,
    started: i64,
    committed: Option<i64>,
    origin: RunOrigin,
    end: End,
}

impl Run {
    fn came_with(&self, deployment_id: &str) -> bool {
        matches!(&self.origin, RunOrigin::Deployment { deployment_id: id, .. } if id == deployment_id)
    }

    fn into_protocol(self) -> ReleaseRun {
        ReleaseRun {
            version: self.version,
            release_id: self.release_id,
            started_at: rfc3339(self.started),
            committed_at: self.committed.map(rfc3339),
            origin: self.origin,
            end: match self.end {
                End::Running => RunEnd::Running,
                End::Replaced { by_version, at } => RunEnd::Replaced {
                    by_version,
                    at: rfc3339(at),
                },
                End::RolledBack { reason, at } => RunEnd::RolledBack {
                    reason,
                    at: rfc3339(at),
                },
                End::Failed { error, at } => RunEnd::Failed {
                    error,
                    at: rfc3339(at),
                },
            },
        }
    }
}

/// One robot's runs on one track, built by feeding it what happened in time order.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    runs: Vec<Run>,
    /// An app's track: a release there runs from its activation, with no trial boot to report,
    /// so one that failed its checks is known only from its `rolled_back`.
    app: bool,
}

impl Timeline {
    /// Starts `run`; the current run, unless it already ended (a rollback from the first
    /// release the server knew of), ends replaced by it.
    fn start(&mut self, run: Run) {
        if let Some(current) = self.runs.last_mut().filter(|r| r.end == End::Running) {
            current.end = End::Replaced {
                by_version: run.version.clone(),
                at: run.started,
            };
        }
        self.runs.push(run);
    }

    pub fn feed(&mut self, at: i64, happening: Happening) {
        match happening {
            Happening::Deployed {
                deployment,
                release_id,
                version,
                step: step @ (Step::Trial | Step::Committed),
                ..
            } => self.booted(at, deployment, release_id, version, step),
            Happening::Deployed {
                deployment,
                release_id,
                version,
                step: step @ (Step::RolledBack | Step::Failed),
                detail,
            } => {
                let id = deployment.id.clone();
                if self.app
                    && step == Step::RolledBack
                    && !self.runs.iter().any(|r| r.came_with(&id))
                {
                    // The app release ran from its activation until its checks failed.
                    self.booted(at, deployment, release_id, version, Step::Trial);
                }
                self.went_back(at, &id, step, detail.unwrap_or_default())
            }
            Happening::Reported {
                version,
                release_id,
            } => {
                if let Some(current) = self.runs.last_mut() {
                    if current.version == version {
                        current.release_id = current.release_id.take().or(release_id);
                        return;
                    }
                }
                self.start(Run {
                    version,
                    release_id,
                    started: at,
                    committed: None,
                    origin: RunOrigin::LocalInstall,
                    end: End::Running,
                });
            }
        }
    }

    fn booted(
        &mut self,
        at: i64,
        deployment: DeploymentInfo,
        release_id: String,
        version: String,
        step: Step,
    ) {
        let committed = (step == Step::Committed).then_some(at);
        if let Some(current) = self.runs.last_mut() {
            if current.came_with(&deployment.id) {
                current.committed = current.committed.or(committed);
                return;
            }
            // The slot report of this boot came before the event: the deployment explains it.
            if current.origin == RunOrigin::LocalInstall && current.version == version {
                current.origin = origin_of(deployment);
                current.release_id = Some(release_id);
                current.committed = committed;
                return;
            }
        }
        self.start(Run {
            version,
            release_id: Some(release_id),
            started: at,
            committed,
            origin: origin_of(deployment),
            end: End::Running,
        });
    }

    fn went_back(&mut self, at: i64, deployment_id: &str, step: Step, detail: String) {
        let Some(tried) = self.runs.iter().rposition(|r| r.came_with(deployment_id)) else {
            // It never booted that release (a failed download or install): no run to end.
            return;
        };
        let last = self.runs.len() - 1;
        let (end_at, back_on) = if tried == last {
            (at, None)
        } else if tried + 1 == last && self.runs[last].origin == RunOrigin::LocalInstall {
            // The robot's slot report from its old release came before this event.
            (self.runs[last].started, Some(last))
        } else {
            // A later release already took over; this report changes nothing.
            return;
        };
        let from_version = self.runs[tried].version.clone();
        self.runs[tried].end = match step {
            Step::Failed => End::Failed {
                error: detail,
                at: end_at,
            },
            _ => End::RolledBack {
                reason: detail,
                at: end_at,
            },
        };
        let origin = RunOrigin::RobotRollback {
            deployment_id: deployment_id.to_string(),
            from_version,
        };
        match back_on {
            Some(index) => self.runs[index].origin = origin,
            None if tried > 0 => {
                let before = &self.runs[tried - 1];
                self.runs.push(Run {
                    version: before.version.clone(),
                    release_id: before.release_id.clone(),
                    started: at,
                    committed: None,
                    origin,
                    end: End::Running,
                });
            }
            // Nothing known ran before: its next slot report will say what it went back to.
            None => {}
        }
    }

    /// The runs that overlap `[since, until]` (milliseconds, either end open), oldest first.
    pub fn runs_between(self, since: Option<i64>, until: Option<i64>) -> Vec<ReleaseRun> {
        self.runs
            .into_iter()
            .filter(|run| until.is_none_or(|until| run.started <= until))
            .filter(|run| match (since, run.end.at()) {
                (Some(since), Some(ended)) => ended >= since,
                _ => true,
            })
            .map(Run::into_protocol)
            .collect()
    }
}

fn origin_of(deployment: DeploymentInfo) -> RunOrigin {
    RunOrigin::Deployment {
        deployment_id: deployment.id,
        deployment_kind: deployment.kind,
        created_by: deployment.created_by,
    }
}

/// Which robots and which time range a history query is about.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub robot: Option<String>,
    pub group: Option<String>,
    /// Only this app's track. [default: the OS and every app]
    pub app: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

type EventRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
);

/// Every selected robot's release history, by robot id. Robots that ran nothing in the range
/// are listed with no runs when they are enrolled.
pub async fn load(
    conn: &mut AnyConnection,
    filter: &Filter,
) -> Result<Vec<RobotReleaseHistory>, sqlx::Error> {
    let robot = filter.robot.clone().unwrap_or_default();
    let group = filter.group.clone().unwrap_or_default();
    // Empty strings stand for "any", so one statement serves every filter combination.
    let selects_robot = "($1 = '' OR x.robot_id = $2)
         AND ($3 = '' OR x.robot_id IN (SELECT robot_id FROM group_members WHERE group_name = $4))";
    let events: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT x.robot_id, x.deployment_id, x.release_id, r.version, r.app, x.event, x.detail, x.at,
                COALESCE(d.created_by, ''), d.kind
         FROM robot_events x
         JOIN releases r ON r.id = x.release_id
         LEFT JOIN deployments d ON d.id = x.deployment_id
         WHERE x.deployment_id IS NOT NULL
           AND x.event IN ('trial', 'committed', 'rolled_back', 'failed')
           AND {selects_robot}
         ORDER BY x.id"
    ))
    .bind(&robot)
    .bind(&robot)
    .bind(&group)
    .bind(&group)
    .fetch_all(&mut *conn)
    .await?;
    let reports: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(&format!(
        "SELECT x.robot_id, x.version, x.release_id, x.at FROM robot_version_reports x
         WHERE {selects_robot} ORDER BY x.id"
    ))
    .bind(&robot)
    .bind(&robot)
    .bind(&group)
    .bind(&group)
    .fetch_all(&mut *conn)
    .await?;
    let enrolled: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT x.id FROM (SELECT id, id AS robot_id FROM robots) x WHERE {selects_robot}"
    ))
    .bind(&robot)
    .bind(&robot)
    .bind(&group)
    .bind(&group)
    .fetch_all(&mut *conn)
    .await?;

    // (robot, track, at, source order) -> happening; the OS track (None) sorts first, and
    // events before reports at the same instant.
    type Key = (String, Option<String>, i64, u8, usize);
    let mut happenings: BTreeMap<Key, Happening> = BTreeMap::new();
    for (
        n,
        (robot_id, deployment_id, release_id, version, app, event, detail, at, created_by, kind),
    ) in events.into_iter().enumerate()
    {
        let Some(step) = Step::parse(&event) else {
            continue;
        };
        let deployment = DeploymentInfo {
            id: deployment_id,
            kind,
            created_by,
        };
        happenings.insert(
            (robot_id, app, at, 0, n),
            Happening::Deployed {
                deployment,
                release_id,
                version,
                step,
                detail,
            },
        );
    }
    for (n, (robot_id, version, release_id, at)) in reports.into_iter().enumerate() {
        happenings.insert(
            (robot_id, None, at, 1, n),
            Happening::Reported {
                version,
                release_id,
            },
        );
    }
    let mut timelines: BTreeMap<(String, Option<String>), Timeline> = BTreeMap::new();
    if filter.app.is_none() {
        for id in enrolled {
            timelines.entry((id, None)).or_default();
        }
    }
    for ((robot_id, app, at, _, _), happening) in happenings {
        if filter.app.is_some() && app != filter.app {
            continue;
        }
        let is_app = app.is_some();
        timelines
            .entry((robot_id, app))
            .or_insert_with(|| Timeline {
                app: is_app,
                ..Timeline::default()
            })
            .feed(at, happening);
    }
    Ok(timelines
        .into_iter()
        .map(|((robot_id, app), timeline)| RobotReleaseHistory {
            runs: timeline.runs_between(filter.since_ms, filter.until_ms),
            robot_id,
            app,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(id: &str, version: &str, step: Step, detail: Option<&str>) -> Happening {
        Happening::Deployed {
            deployment: DeploymentInfo {
                id: id.into(),
                kind: None,
                created_by: "key:k1 (ci)".into(),
            },
            release_id: format!("rel_{version}"),
            version: version.into(),
            step,
            detail: detail.map(str::to_string),
        }
    }

    fn reported(version: &str) -> Happening {
        Happening::Reported {
            version: version.into(),
            release_id: None,
        }
    }

    fn from(id: &str) -> RunOrigin {
        RunOrigin::Deployment {
            deployment_id: id.into(),
            deployment_kind: None,
            created_by: "key:k1 (ci)".into(),
        }
    }

    /// (version, started ms, origin, end) of a run.
    type RunSummary = (String, i64, RunOrigin, End);

    fn summary(happenings: Vec<(i64, Happening)>) -> Vec<RunSummary> {
        let mut timeline = Timeline::default();
        for (at, happening) in happenings {
            timeline.feed(at, happening);
        }
        timeline
            .runs
            .into_iter()
            .map(|r| (r.version, r.started, r.origin, r.end))
            .collect()
    }

    fn replaced(by: &str, at: i64) -> End {
        End::Replaced {
            by_version: by.into(),
            at,
        }
    }

    const HEALTH: &str = "health check failed";

    #[test]
    fn timelines_follow_deployments_rollbacks_and_local_installs() {
        let rolled_back = |at| End::RolledBack {
            reason: HEALTH.into(),
            at,
        };
        let back_from_2 = RunOrigin::RobotRollback {
            deployment_id: "dep_2".into(),
            from_version: "2.0.0".into(),
        };
        type Case = (&'static str, Vec<(i64, Happening)>, Vec<RunSummary>);
        let cases: Vec<Case> = vec![
            (
                "factory image, then a deployment commits",
                vec![
                    (10, reported("1.0.0")),
                    (20, deployed("dep_1", "1.1.0", Step::Trial, None)),
                    (21, reported("1.1.0")),
                    (25, deployed("dep_1", "1.1.0", Step::Committed, None)),
                ],
                vec![
                    (
                        "1.0.0".into(),
                        10,
                        RunOrigin::LocalInstall,
                        replaced("1.1.0", 20),
                    ),
                    ("1.1.0".into(), 20, from("dep_1"), End::Running),
                ],
            ),
            (
                "a failed health check goes back to the release before",
                vec![
                    (10, reported("1.0.0")),
                    (20, deployed("dep_2", "2.0.0", Step::Trial, None)),
                    (
                        30,
                        deployed("dep_2", "2.0.0", Step::RolledBack, Some(HEALTH)),
                    ),
                ],
                vec![
                    (
                        "1.0.0".into(),
                        10,
                        RunOrigin::LocalInstall,
                        replaced("2.0.0", 20),
                    ),
                    ("2.0.0".into(), 20, from("dep_2"), rolled_back(30)),
                    ("1.0.0".into(), 30, back_from_2.clone(), End::Running),
                ],
            ),
            (
                "the old slot's report arrives before the rolled_back event",
                vec![
                    (10, reported("1.0.0")),
                    (20, deployed("dep_2", "2.0.0", Step::Trial, None)),
                    (28, reported("1.0.0")),
                    (
                        30,
                        deployed("dep_2", "2.0.0", Step::RolledBack, Some(HEALTH)),
                    ),
                ],
                vec![
                    (
                        "1.0.0".into(),
                        10,
                        RunOrigin::LocalInstall,
                        replaced("2.0.0", 20),
                    ),
                    ("2.0.0".into(), 20, from("dep_2"), rolled_back(28)),
                    ("1.0.0".into(), 28, back_from_2, End::Running),
                ],
            ),
            (
                "the new slot's report arrives before the trial event",
                vec![
                    (10, deployed("dep_1", "1.0.0", Step::Committed, None)),
                    (19, reported("2.0.0")),
                    (20, deployed("dep_2", "2.0.0", Step::Trial, None)),
                    (21, deployed("dep_2", "2.0.0", Step::Committed, None)),
                ],
                vec![
                    ("1.0.0".into(), 10, from("dep_1"), replaced("2.0.0", 19)),
                    ("2.0.0".into(), 19, from("dep_2"), End::Running),
                ],
            ),
            (
                "a release no deployment gave replaces a deployed one",
                vec![
                    (10, deployed("dep_1", "1.0.0", Step::Trial, None)),
                    (11, deployed("dep_1", "1.0.0", Step::Committed, None)),
                    (50, reported("0.9.0-hotfix")),
                ],
                vec![
                    (
                        "1.0.0".into(),
                        10,
                        from("dep_1"),
                        replaced("0.9.0-hotfix", 50),
                    ),
                    (
                        "0.9.0-hotfix".into(),
                        50,
                        RunOrigin::LocalInstall,
                        End::Running,
                    ),
                ],
            ),
            (
                "a failed download never ran, so it changes nothing",
                vec![
                    (10, reported("1.0.0")),
                    (
                        20,
                        deployed("dep_3", "3.0.0", Step::Failed, Some("bundle rejected")),
                    ),
                ],
                vec![("1.0.0".into(), 10, RunOrigin::LocalInstall, End::Running)],
            ),
            (
                "a rollback from the first release known keeps its end when the next comes",
                vec![
                    (20, deployed("dep_2", "2.0.0", Step::Trial, None)),
                    (
                        30,
                        deployed("dep_2", "2.0.0", Step::RolledBack, Some(HEALTH)),
                    ),
                    (40, deployed("dep_3", "2.1.0", Step::Trial, None)),
                ],
                vec![
                    ("2.0.0".into(), 20, from("dep_2"), rolled_back(30)),
                    ("2.1.0".into(), 40, from("dep_3"), End::Running),
                ],
            ),
            (
                "a failure after the boot ends the run like a rollback",
                vec![
                    (10, deployed("dep_1", "1.0.0", Step::Committed, None)),
                    (20, deployed("dep_3", "3.0.0", Step::Trial, None)),
                    (
                        25,
                        deployed("dep_3", "3.0.0", Step::Failed, Some("disk full")),
                    ),
                ],
                vec![
                    ("1.0.0".into(), 10, from("dep_1"), replaced("3.0.0", 20)),
                    (
                        "3.0.0".into(),
                        20,
                        from("dep_3"),
                        End::Failed {
                            error: "disk full".into(),
                            at: 25,
                        },
                    ),
                    (
                        "1.0.0".into(),
                        25,
                        RunOrigin::RobotRollback {
                            deployment_id: "dep_3".into(),
                            from_version: "3.0.0".into(),
                        },
                        End::Running,
                    ),
                ],
            ),
        ];
        for (name, happenings, expected) in cases {
            assert_eq!(summary(happenings), expected, "{name}");
        }
    }

    #[test]
    fn a_time_range_keeps_the_runs_that_overlap_it() {
        let mut timeline = Timeline::default();
        timeline.feed(10, reported("1.0.0"));
        timeline.feed(20, deployed("dep_1", "2.0.0", Step::Committed, None));
        timeline.feed(30, deployed("dep_2", "3.0.0", Step::Committed, None));
        let versions = |since, until| -> Vec<String> {
            timeline
                .clone()
                .runs_between(since, until)
                .into_iter()
                .map(|r| r.version)
                .collect()
        };
        assert_eq!(versions(None, None), ["1.0.0", "2.0.0", "3.0.0"]);
        assert_eq!(versions(Some(25), None), ["2.0.0", "3.0.0"]);
        assert_eq!(versions(None, Some(15)), ["1.0.0"]);
        assert_eq!(versions(Some(21), Some(29)), ["2.0.0"]);
        assert_eq!(versions(Some(31), None), ["3.0.0"]);
    }
}
