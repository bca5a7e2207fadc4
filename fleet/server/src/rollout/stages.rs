//! Which stage each robot of a rollout belongs to.
//!
//! Decided by a stable hash of deployment and robot, never by arrival order or a random number,
//! so a restarted server or a second replica computes the same split.

use rota_protocol::operator::Strategy;
use sha2::{Digest, Sha256};

/// A robot's place in the deployment's order: uniform over `u64`.
pub fn robot_hash(deployment_id: &str, robot_id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(deployment_id.as_bytes())
        .chain_update([0])
        .chain_update(robot_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A robot the rollout reaches, and whether it is in the strategy's canary group.
pub struct Member<'a> {
    pub id: &'a str,
    pub in_canary_group: bool,
}

/// Stages of the robots a deployment reaches at its creation, in the order given. Stages are
/// exact for the members known now: of 20 robots at 10/50/100 percent, 2 go to stage 0, 8 to
/// stage 1 and 10 to stage 2.
pub fn plan(strategy: &Strategy, deployment_id: &str, members: &[Member]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&index| (robot_hash(deployment_id, members[index].id), index));
    let mut rank = vec![0usize; members.len()];
    for (position, index) in order.into_iter().enumerate() {
        rank[index] = position;
    }
    let total = members.len();
    members
        .iter()
        .zip(rank)
        .map(|(member, rank)| match strategy {
            Strategy::Immediate => 0,
            Strategy::Staged { percents, .. } => percents
                .iter()
                .position(|&percent| rank < (total * usize::from(percent)).div_ceil(100))
                .unwrap_or(percents.len().saturating_sub(1))
                as u32,
            Strategy::Canary { group: Some(_), .. } => u32::from(!member.in_canary_group),
            Strategy::Canary { count, .. } => u32::from(rank >= count.unwrap_or(1) as usize),
        })
        .collect()
}

/// Stage of a robot that joins after the deployment started: its hash decides, so the stages
/// keep their proportions. Counted canaries were chosen at the start; newcomers follow them.
pub fn late_joiner_stage(strategy: &Strategy, deployment_id: &str, member: &Member) -> u32 {
    match strategy {
        Strategy::Immediate => 0,
        Strategy::Staged { percents, .. } => {
            let fraction = robot_hash(deployment_id, member.id) as f64 / (u64::MAX as f64 + 1.0);
            percents
                .iter()
                .position(|&percent| fraction * 100.0 < f64::from(percent))
                .unwrap_or(percents.len().saturating_sub(1)) as u32
        }
        Strategy::Canary { group: Some(_), .. } => u32::from(!member.in_canary_group),
        Strategy::Canary { .. } => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_protocol::operator::Guard;

    fn staged(percents: &[u8]) -> Strategy {
        Strategy::Staged {
            percents: percents.to_vec(),
            wait_secs: 0,
            guard: Guard::default(),
        }
    }

    fn members(ids: &[String]) -> Vec<Member<'_>> {
        ids.iter()
            .map(|id| Member {
                id,
                in_canary_group: false,
            })
            .collect()
    }

    #[test]
    fn staged_split_is_exact_and_the_same_in_any_order() {
        let ids: Vec<String> = (1..=20).map(|n| format!("robot-{n:03}")).collect();
        let plan_of = |ids: &[String]| {
            let stages = plan(&staged(&[10, 50, 100]), "dep_1", &members(ids));
            ids.iter()
                .cloned()
                .zip(stages)
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let forward = plan_of(&ids);
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(forward, plan_of(&reversed));
        let per_stage = |stage| forward.values().filter(|&&s| s == stage).count();
        assert_eq!((per_stage(0), per_stage(1), per_stage(2)), (2, 8, 10));
        // Another deployment picks other robots first.
        let other = plan(&staged(&[10, 50, 100]), "dep_2", &members(&ids));
        assert_ne!(forward.values().copied().collect::<Vec<_>>(), other);
    }

    #[test]
    fn canaries_by_count_or_group_and_late_joiners() {
        let ids: Vec<String> = (1..=5).map(|n| format!("r{n}")).collect();
        let by_count = Strategy::Canary {
            group: None,
            count: Some(2),
            wait_secs: None,
            guard: Guard::default(),
        };
        let stages = plan(&by_count, "dep_x", &members(&ids));
        assert_eq!(stages.iter().filter(|&&s| s == 0).count(), 2);
        let newcomer = Member {
            id: "r9",
            in_canary_group: true,
        };
        assert_eq!(late_joiner_stage(&by_count, "dep_x", &newcomer), 1);
        let by_group = Strategy::Canary {
            group: Some("canary".into()),
            count: None,
            wait_secs: Some(0),
            guard: Guard::default(),
        };
        assert_eq!(late_joiner_stage(&by_group, "dep_x", &newcomer), 0);
        // Late joiners of a staged rollout spread like the hash says, roughly in proportion.
        let joined: Vec<u32> = (0..1000)
            .map(|n| {
                let id = format!("late-{n}");
                let member = Member {
                    id: &id,
                    in_canary_group: false,
                };
                late_joiner_stage(&staged(&[10, 50, 100]), "dep_y", &member)
            })
            .collect();
        let first = joined.iter().filter(|&&s| s == 0).count();
        assert!(
            (50..=150).contains(&first),
            "{first} of 1000 in the 10% stage"
        );
    }
}
