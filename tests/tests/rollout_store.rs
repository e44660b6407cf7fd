//! The rollout table against the local stack: transitions are written only over the revision
//! they were computed from, so racing advancers move a rollout once per phase and the audit log
//! has exactly one entry per move.

use shoal_aws::rollout_table::RolloutTable;
use shoal_core::rollout::state::{Command, Rollout, RolloutStatus};
use shoal_integration_tests::local::{self, unique_name};

fn rollout(id: &str) -> Rollout {
    shoal_core::test_util::rollout(id)
}

async fn table() -> RolloutTable {
    let factory = local::factory().await;
    let table = RolloutTable::new(factory.dynamodb(), unique_name("rollouts").parse().unwrap());
    table.ensure_exists().await.unwrap();
    table
}

#[tokio::test]
async fn racing_advancers_never_double_advance() {
    let table = table().await;
    let id = unique_name("rollout");
    assert!(table.create(&rollout(&id)).await.unwrap());
    assert!(
        !table.create(&rollout(&id)).await.unwrap(),
        "ids are unique"
    );

    // Two advancers read the same revision and both decide to advance.
    let read = table.get(&id).await.unwrap().unwrap();
    let (a, ta) = read
        .apply(Command::Advance { to: 1 }, "advancer-a", 10)
        .unwrap();
    let (b, tb) = read
        .apply(Command::Advance { to: 1 }, "advancer-b", 11)
        .unwrap();
    let (wa, wb) = tokio::join!(
        table.transition(&read, &a, &ta),
        table.transition(&read, &b, &tb)
    );
    assert_eq!(
        u8::from(wa.unwrap()) + u8::from(wb.unwrap()),
        1,
        "exactly one write lands"
    );
    let now = table.get(&id).await.unwrap().unwrap();
    assert_eq!((now.phase, now.revision), (1, 2));
    assert_eq!(table.audit(&id).await.unwrap().len(), 1);

    // Eight more advancers, each reading and advancing as fast as it can.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (table, id) = (table.clone(), id.clone());
        tasks.spawn(async move {
            let read = table.get(&id).await.unwrap().unwrap();
            let Ok((next, t)) = read.apply(
                Command::Advance { to: read.phase + 1 },
                &format!("advancer-{n}"),
                20,
            ) else {
                return false; // already in the last phase
            };
            table.transition(&read, &next, &t).await.unwrap()
        });
    }
    let landed = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
    let end = table.get(&id).await.unwrap().unwrap();
    let audit = table.audit(&id).await.unwrap();
    assert_eq!(audit.len(), 1 + landed);
    assert_eq!(end.phase, 1 + landed);
    assert!(end.phase < end.plan.phases.len());
    for (i, t) in audit.iter().enumerate() {
        assert_eq!(
            (t.from_phase, t.to_phase, t.revision),
            (i, i + 1, i as u64 + 2),
            "{audit:?}"
        );
    }
}

#[tokio::test]
async fn pause_resume_and_rollback_are_audited() {
    let table = table().await;
    let id = unique_name("rollout");
    table.create(&rollout(&id)).await.unwrap();
    for (command, actor) in [
        (
            Command::Pause {
                reason: "canary failure rate 8.3% is above 5.0%".into(),
            },
            "advancer",
        ),
        (Command::Resume, "alice"),
        (
            Command::Rollback {
                reason: "radio regression".into(),
            },
            "alice",
        ),
    ] {
        let read = table.get(&id).await.unwrap().unwrap();
        let (next, t) = read.apply(command, actor, 100).unwrap();
        assert!(table.transition(&read, &next, &t).await.unwrap());
    }
    let end = table.get(&id).await.unwrap().unwrap();
    assert_eq!(end.status, RolloutStatus::RolledBack);
    assert_eq!(end.reason.as_deref(), Some("radio regression"));
    let statuses: Vec<_> = table
        .audit(&id)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.to_status, t.actor.clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (RolloutStatus::Paused, "advancer".to_owned()),
            (RolloutStatus::Active, "alice".to_owned()),
            (RolloutStatus::RolledBack, "alice".to_owned()),
        ]
    );
    // A stale copy cannot overwrite the rolled-back state.
    let stale = rollout(&id);
    let (next, t) = stale
        .apply(Command::Advance { to: 1 }, "late-advancer", 200)
        .unwrap();
    assert!(!table.transition(&stale, &next, &t).await.unwrap());
    assert_eq!(
        table.get(&id).await.unwrap().unwrap().status,
        RolloutStatus::RolledBack
    );
}
