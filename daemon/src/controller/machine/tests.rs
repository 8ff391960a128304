//! Unit tests of the transition function: named scenarios first, then seeded random event
//! sequences that check the invariants of the module documentation after every step.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn policy() -> RestartPolicy {
    RestartPolicy {
        budget: 3,
        window: Duration::from_secs(60),
        backoff: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        stop: Duration::from_secs(20),
        report_grace: Duration::from_secs(5),
    }
}

fn spec() -> Spec {
    Spec {
        query: "SELECT 1".into(),
        plan_hash: "h".into(),
        parallelism: 1,
        checkpoint_interval: Duration::from_secs(10),
        state_location: "p1".into(),
        memory_limit: 0,
    }
}

fn created() -> Machine {
    Machine::new(
        spec(),
        State::Created,
        Desired::Running,
        0,
        policy(),
        timeouts(),
    )
}

/// Applies `event` at `now`, which must be accepted; returns the effects.
fn ok(m: &mut Machine, event: Event, now: Duration) -> Vec<Effect> {
    m.apply(event.clone(), now)
        .unwrap_or_else(|r| panic!("{event:?} refused: {r}"))
}

fn has(fx: &[Effect], pred: impl Fn(&Effect) -> bool) -> bool {
    fx.iter().any(pred)
}

fn spawned(fx: &[Effect]) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Spawn { generation } => Some(*generation),
        _ => None,
    })
}

/// A machine whose generation 1 worker is attached and running.
fn running() -> Machine {
    let mut m = created();
    ok(&mut m, Event::Start, MS);
    ok(&mut m, Event::Attached { generation: 1 }, MS);
    ok(
        &mut m,
        Event::Reported {
            generation: 1,
            report: Report::Running { restored: None },
        },
        MS,
    );
    assert_eq!(m.state, State::Running);
    m
}

fn report(generation: u64, report: Report) -> Event {
    Event::Reported { generation, report }
}

fn exited(generation: u64) -> Event {
    Event::Exited {
        generation,
        status: "signal: 9".into(),
    }
}

#[test]
fn a_pipeline_runs_and_finishes() {
    let mut m = created();
    let fx = ok(&mut m, Event::Start, MS);
    assert_eq!(m.state, State::Scheduling);
    assert_eq!(m.generation, 1);
    // The generation is persisted before its worker is spawned.
    let persist = fx
        .iter()
        .position(|e| matches!(e, Effect::Persist { .. }))
        .unwrap();
    let spawn = fx
        .iter()
        .position(|e| matches!(e, Effect::Spawn { generation: 1 }))
        .unwrap();
    assert!(persist < spawn, "{fx:?}");
    let fx = ok(&mut m, Event::Attached { generation: 1 }, MS);
    assert_eq!(
        fx,
        vec![Effect::Accept {
            generation: 1,
            then_stop: None
        }]
    );
    ok(&mut m, report(1, Report::Running { restored: None }), MS);
    let rows = Report::Rows {
        sink: "preview".into(),
        rows: vec!["{}".into()],
    };
    let fx = ok(&mut m, report(1, rows), MS);
    assert_eq!(
        fx,
        vec![Effect::AppendRows {
            sink: "preview".into(),
            rows: vec!["{}".into()]
        }]
    );
    let info = CheckpointInfo {
        epoch: 4,
        bytes: 10,
        duration_ms: 1,
    };
    let fx = ok(&mut m, report(1, Report::CommitRequest(4)), MS);
    assert_eq!(
        fx,
        vec![Effect::Send {
            generation: 1,
            command: Command::Commit {
                epoch: 4,
                allowed: true
            }
        }]
    );
    ok(&mut m, report(1, Report::CheckpointCompleted(info)), MS);
    assert_eq!(m.last_checkpoint, 4);
    let fx = ok(&mut m, report(1, Report::Finished), MS);
    assert_eq!(m.state, State::Finished);
    // Nothing is left to run: it is not wanted running any more.
    assert_eq!(m.desired, Desired::Stopped);
    assert!(has(&fx, |e| *e == Effect::CloseOutput));
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    let fx = ok(&mut m, exited(1), MS);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(m.worker, None);
    assert_eq!(m.state, State::Finished);
}

#[test]
fn a_stop_with_checkpoint_waits_for_the_worker_and_its_deadline_kills() {
    let mut m = running();
    let fx = ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert_eq!(m.state, State::Stopping);
    assert_eq!(m.desired, Desired::Stopped);
    assert!(has(&fx, |e| *e
        == Effect::Send {
            generation: 1,
            command: Command::Stop(StopMode::Checkpoint)
        }));
    assert!(has(&fx, |e| matches!(
        e,
        Effect::Arm {
            timer: Timer::StopDeadline { generation: 1 },
            ..
        }
    )));
    // A weaker or equal stop is not sent again; a stronger one is.
    let fx = ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert!(!has(&fx, |e| matches!(e, Effect::Send { .. })), "{fx:?}");
    let fx = ok(&mut m, Event::Stop(StopMode::Graceful), MS);
    assert!(has(&fx, |e| matches!(
        e,
        Effect::Send {
            command: Command::Stop(StopMode::Graceful),
            ..
        }
    )));
    // The deadline kills a worker that does not stop.
    let fx = ok(
        &mut m,
        Event::Fired(Timer::StopDeadline { generation: 1 }),
        MS,
    );
    assert!(has(&fx, |e| *e == Effect::Kill { generation: 1 }));
    // Its exit ends the stop, saying no final checkpoint was taken.
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    let fx = ok(&mut m, exited(1), MS);
    assert_eq!(m.state, State::Stopped);
    assert!(has(
        &fx,
        |e| matches!(e, Effect::Persist { message, .. } if message.contains("worker killed"))
    ));
}

#[test]
fn a_stop_says_whether_it_took_a_final_checkpoint() {
    let checkpoint = |epoch| {
        report(
            1,
            Report::CheckpointCompleted(CheckpointInfo {
                epoch,
                bytes: 1,
                duration_ms: 1,
            }),
        )
    };
    // The final checkpoint completed before Stopped: clean.
    let mut m = running();
    ok(&mut m, checkpoint(3), MS);
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(&mut m, checkpoint(4), MS);
    ok(&mut m, report(1, Report::Stopped), MS);
    let end = m.last_stop.clone().unwrap();
    assert!(end.clean, "{end:?}");
    assert_eq!(end.epoch, 4);
    assert!(end.message.contains("final checkpoint (4)"), "{end:?}");
    // Stopped without one: not clean, and it says where it resumes from.
    let mut m = running();
    ok(&mut m, checkpoint(3), MS);
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(&mut m, report(1, Report::Stopped), MS);
    let end = m.last_stop.clone().unwrap();
    assert!(!end.clean);
    assert!(end.message.contains("checkpoint 3"), "{end:?}");
    // Killed at the deadline: not clean.
    let mut m = running();
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(
        &mut m,
        Event::Fired(Timer::StopDeadline { generation: 1 }),
        MS,
    );
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    ok(&mut m, exited(1), MS);
    let end = m.last_stop.clone().unwrap();
    assert!(!end.clean);
    assert!(end.message.contains("no final checkpoint"), "{end:?}");
    assert!(end.message.contains("the start"), "{end:?}");
    // An immediate stop kills as asked: clean.
    let mut m = running();
    ok(&mut m, Event::Stop(StopMode::Immediate), MS);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    ok(&mut m, exited(1), MS);
    let end = m.last_stop.clone().unwrap();
    assert!(end.clean, "{end:?}");
    assert_eq!(end.mode, StopMode::Immediate);
}

#[test]
fn a_worker_that_stops_in_time_ends_stopped_and_its_deadline_is_ignored() {
    let mut m = running();
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(&mut m, report(1, Report::Stopped), MS);
    assert_eq!(m.state, State::Stopped);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    ok(&mut m, exited(1), MS);
    let fx = ok(
        &mut m,
        Event::Fired(Timer::StopDeadline { generation: 1 }),
        MS,
    );
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(m.state, State::Stopped);
}

#[test]
fn an_immediate_stop_or_a_stop_before_attach_kills() {
    let mut m = running();
    let fx = ok(&mut m, Event::Stop(StopMode::Immediate), MS);
    assert!(has(&fx, |e| *e == Effect::Kill { generation: 1 }));
    let mut m = created();
    ok(&mut m, Event::Start, MS);
    let fx = ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert!(has(&fx, |e| *e == Effect::Kill { generation: 1 }));
    // The killed worker's Hello is refused.
    let fx = ok(&mut m, Event::Attached { generation: 1 }, MS);
    assert_eq!(fx, vec![Effect::Refuse { generation: 1 }]);
    ok(&mut m, exited(1), MS);
    assert_eq!(m.state, State::Stopped);
}

#[test]
fn a_crashed_worker_restarts_with_backoff_until_the_budget_is_used_up() {
    let mut m = running();
    let mut now = Duration::from_secs(1);
    let mut delays = Vec::new();
    for generation in 1..=3 {
        ok(&mut m, Event::ReportsEnded { generation }, now);
        let fx = ok(&mut m, exited(generation), now);
        assert_eq!(m.state, State::Recovering, "{fx:?}");
        let delay = fx
            .iter()
            .find_map(|e| match e {
                Effect::Arm {
                    timer: Timer::Restart { generation: g },
                    after,
                } if *g == generation => Some(*after),
                _ => None,
            })
            .unwrap();
        delays.push(delay);
        now += delay;
        let fx = ok(&mut m, Event::Fired(Timer::Restart { generation }), now);
        assert_eq!(spawned(&fx), Some(generation + 1));
        ok(
            &mut m,
            Event::Attached {
                generation: generation + 1,
            },
            now,
        );
    }
    assert_eq!(
        delays,
        [100, 200, 400].map(Duration::from_millis).to_vec(),
        "the backoff doubles"
    );
    ok(&mut m, Event::ReportsEnded { generation: 4 }, now);
    let fx = ok(&mut m, exited(4), now);
    assert_eq!(m.state, State::Failed);
    assert!(
        m.failure.contains("3 restarts within 1m used up"),
        "{}",
        m.failure
    );
    assert!(has(&fx, |e| *e == Effect::CloseOutput));
    // Restarts older than the window do not count: a resume, then a crash much later.
    ok(&mut m, Event::Resume(Changes::default()), now);
    ok(&mut m, Event::Attached { generation: 5 }, now);
    now += Duration::from_secs(3600);
    ok(&mut m, Event::ReportsEnded { generation: 5 }, now);
    let fx = ok(&mut m, exited(5), now);
    assert_eq!(m.state, State::Recovering, "{fx:?}");
}

#[test]
fn stale_generations_are_refused_and_ignored() {
    let mut m = running();
    // Crash, then restart as generation 2.
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    ok(&mut m, exited(1), MS);
    ok(&mut m, Event::Fired(Timer::Restart { generation: 1 }), MS);
    assert_eq!(m.generation, 2);
    let fx = ok(&mut m, Event::Attached { generation: 1 }, MS);
    assert_eq!(fx, vec![Effect::Refuse { generation: 1 }]);
    for r in [
        Report::Running { restored: None },
        Report::Finished,
        Report::CommitRequest(9),
        Report::Failed("old".into()),
    ] {
        let fx = ok(&mut m, report(1, r), MS);
        assert!(fx.is_empty(), "{fx:?}");
    }
    assert_eq!(m.state, State::Scheduling);
    // A Restart timer of generation 1 fired twice starts nothing more.
    let fx = ok(&mut m, Event::Fired(Timer::Restart { generation: 1 }), MS);
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn racing_resumes_start_one_generation() {
    let mut m = running();
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(&mut m, report(1, Report::Stopped), MS);
    // The worker reported Stopped but has not exited: a resume kills it and waits.
    let fx = ok(&mut m, Event::Resume(Changes::default()), MS);
    assert_eq!(spawned(&fx), None);
    assert!(has(&fx, |e| *e == Effect::Kill { generation: 1 }));
    assert_eq!(m.state, State::Scheduling);
    // The second resume is refused.
    assert_eq!(
        m.apply(Event::Resume(Changes::default()), MS),
        Err(Refusal::NotStopped(State::Scheduling))
    );
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    let fx = ok(&mut m, exited(1), MS);
    assert_eq!(spawned(&fx), Some(2));
    assert_eq!(m.generation, 2);
}

#[test]
fn a_stop_while_recovering_or_waiting_for_the_previous_worker_ends_stopped() {
    let mut m = running();
    ok(&mut m, exited(1), MS);
    ok(
        &mut m,
        Event::Fired(Timer::ReportGrace { generation: 1 }),
        MS,
    );
    assert_eq!(m.state, State::Recovering);
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert_eq!(m.state, State::Stopped);
    let fx = ok(&mut m, Event::Fired(Timer::Restart { generation: 1 }), MS);
    assert!(fx.is_empty(), "{fx:?}");

    let mut m = running();
    ok(&mut m, report(1, Report::Stopped), MS);
    ok(&mut m, Event::Resume(Changes::default()), MS);
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert_eq!(m.state, State::Stopped);
    let fx = ok(&mut m, exited(1), MS);
    assert_eq!(spawned(&fx), None, "a stop cancels the waiting generation");
}

#[test]
fn a_worker_exit_waits_for_its_last_reports() {
    let mut m = running();
    let fx = ok(&mut m, exited(1), MS);
    assert!(has(&fx, |e| matches!(
        e,
        Effect::Arm {
            timer: Timer::ReportGrace { generation: 1 },
            ..
        }
    )));
    assert_eq!(m.state, State::Running);
    // The final report arrives after the exit: it wins over a crash.
    ok(&mut m, report(1, Report::Finished), MS);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    assert_eq!(m.state, State::Finished);
    assert_eq!(m.worker, None);
}

#[test]
fn shutdown_stops_and_keeps_what_the_user_wants() {
    let mut m = running();
    ok(&mut m, Event::Shutdown, MS);
    assert_eq!(m.state, State::Stopping);
    assert_eq!(m.desired, Desired::Running);
    ok(&mut m, exited(1), MS);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    assert_eq!(m.state, State::Stopped);
    assert_eq!(
        m.apply(Event::Resume(Changes::default()), MS),
        Err(Refusal::ShuttingDown)
    );
    // At the next start it is found stopped, and resumable.
    let mut m = running();
    ok(&mut m, Event::DaemonRestarted, MS);
    assert_eq!(m.state, State::Stopped);
    assert_eq!(m.worker, None);
}

#[test]
fn restart_and_update_stop_with_a_checkpoint_then_start_with_the_changes() {
    let mut m = running();
    let changes = Changes {
        parallelism: Some(3),
        checkpoint_interval: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let fx = ok(&mut m, Event::Restart(changes), MS);
    assert!(has(&fx, |e| matches!(
        e,
        Effect::Send {
            command: Command::Stop(StopMode::Checkpoint),
            ..
        }
    )));
    assert_eq!(m.desired, Desired::Running);
    ok(&mut m, report(1, Report::Stopped), MS);
    assert_eq!(m.state, State::Scheduling);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    let fx = ok(&mut m, exited(1), MS);
    assert_eq!(spawned(&fx), Some(2));
    assert_eq!(m.spec.parallelism, 3);
    assert_eq!(m.spec.checkpoint_interval, Duration::from_secs(1));

    // Without state: a fresh location, nothing to restore.
    let mut m = running();
    m.last_checkpoint = 7;
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    ok(&mut m, report(1, Report::Stopped), MS);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    ok(&mut m, exited(1), MS);
    let fx = ok(
        &mut m,
        Event::Restart(Changes {
            fresh_state: Some("p1-g2".into()),
            ..Default::default()
        }),
        MS,
    );
    assert!(has(&fx, |e| *e == Effect::ForgetCheckpoints));
    assert_eq!(spawned(&fx), Some(2));
    assert_eq!(m.last_checkpoint, 0);
    assert_eq!(m.spec.state_location, "p1-g2");
    // A user's stop under way is not turned into a restart.
    ok(&mut m, Event::Attached { generation: 2 }, MS);
    ok(&mut m, Event::Stop(StopMode::Checkpoint), MS);
    assert_eq!(
        m.apply(Event::Restart(Changes::default()), MS),
        Err(Refusal::NotRunning(State::Stopping))
    );
}

#[test]
fn delete_and_checkpoint_need_the_right_state() {
    let mut m = running();
    assert_eq!(
        m.apply(Event::Delete, MS),
        Err(Refusal::NotStopped(State::Running))
    );
    let fx = ok(&mut m, Event::CheckpointNow, MS);
    assert_eq!(
        fx,
        vec![Effect::Send {
            generation: 1,
            command: Command::Checkpoint
        }]
    );
    ok(&mut m, report(1, Report::Stopped), MS);
    assert_eq!(
        m.apply(Event::CheckpointNow, MS),
        Err(Refusal::NotRunning(State::Stopped))
    );
    assert_eq!(m.apply(Event::Delete, MS), Err(Refusal::WorkerExiting));
    ok(&mut m, exited(1), MS);
    ok(&mut m, Event::ReportsEnded { generation: 1 }, MS);
    assert_eq!(ok(&mut m, Event::Delete, MS), vec![Effect::Forget]);
    assert!(m.is_deleted());
    assert_eq!(m.apply(Event::Start, MS), Err(Refusal::Deleted));
}

#[test]
fn a_failed_store_write_fails_the_pipeline_and_skips_the_spawn() {
    let mut m = created();
    ok(&mut m, Event::Start, MS);
    ok(
        &mut m,
        Event::StoreFailed {
            error: "database or disk is full".into(),
            unspawned: Some(1),
        },
        MS,
    );
    assert_eq!(m.state, State::Failed);
    assert_eq!(m.worker, None);
    assert!(m.failure.contains("disk is full"), "{}", m.failure);
    // With a live worker, it is killed.
    let mut m = running();
    let fx = ok(
        &mut m,
        Event::StoreFailed {
            error: "full".into(),
            unspawned: None,
        },
        MS,
    );
    assert!(has(&fx, |e| *e == Effect::Kill { generation: 1 }));
    assert_eq!(m.state, State::Failed);
}

/// The `rand` crate's generator, seeded, so that a failing seed replays exactly.
struct Rng(rand::rngs::StdRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *rand::seq::IndexedRandom::choose(items, &mut self.0).expect("something to pick")
    }
}

/// The world around one machine: live worker processes and armed timers, as the effects
/// made them.
#[derive(Default)]
struct World {
    /// Generations whose process was spawned and has not exited.
    live: Vec<u64>,
    timers: Vec<Timer>,
    /// Every generation ever spawned, in order.
    spawned: Vec<u64>,
}

/// A random event, mostly about the current generation, sometimes about stale or future ones.
fn random_event(rng: &mut Rng, m: &Machine, world: &World) -> Event {
    let generation = match rng.below(10) {
        0 => m.generation.saturating_sub(1),
        1 => m.generation + 1,
        _ => m.generation,
    };
    let mode = rng.pick(&[
        StopMode::Checkpoint,
        StopMode::Graceful,
        StopMode::Immediate,
    ]);
    match rng.below(24) {
        0 => Event::Start,
        1 | 2 => Event::Resume(Changes::default()),
        3 => Event::Restart(Changes {
            parallelism: Some(2),
            ..Default::default()
        }),
        4 => Event::Restart(Changes {
            fresh_state: Some(format!("fresh-{}", rng.below(100))),
            ..Default::default()
        }),
        5 | 6 => Event::Stop(mode),
        7 if rng.below(8) == 0 => Event::Shutdown,
        8 => Event::Delete,
        9 => Event::CheckpointNow,
        10 | 11 => Event::Attached { generation },
        12 | 19 | 20 | 21 => {
            let r = match rng.below(16) {
                0 => Report::Finished,
                1 => Report::Stopped,
                2 => Report::Failed("boom".into()),
                3..=6 => Report::CommitRequest(rng.below(50)),
                7 | 8 => Report::CheckpointCompleted(CheckpointInfo {
                    epoch: rng.below(50),
                    bytes: 1,
                    duration_ms: 1,
                }),
                9 => Report::Rows {
                    sink: "preview".into(),
                    rows: vec!["{}".into()],
                },
                _ => Report::Running { restored: None },
            };
            Event::Reported {
                generation,
                report: r,
            }
        }
        13 => Event::ReportsEnded { generation },
        15 if !world.live.is_empty() => Event::Exited {
            generation: rng.pick(&world.live),
            status: "exit status: 1".into(),
        },
        17 if rng.below(6) == 0 => Event::SpawnFailed {
            generation,
            error: "no such file".into(),
        },
        18 if rng.below(10) == 0 => Event::StoreFailed {
            error: "disk full".into(),
            unspawned: None,
        },
        _ if !world.timers.is_empty() => {
            let i = rng.below(world.timers.len() as u64) as usize;
            Event::Fired(world.timers[i])
        }
        // A plain Running report: the commonest event of a real run.
        _ => report(generation, Report::Running { restored: None }),
    }
}

fn is_resume_like(e: &Event) -> bool {
    matches!(e, Event::Start | Event::Resume(_) | Event::Restart(_))
}

#[test]
fn seeded_random_sequences_keep_the_invariants() {
    // What the sequences reached, so that the test cannot pass by exercising nothing.
    let mut visited = std::collections::HashSet::new();
    let (mut spawns, mut commits) = (0, 0);
    for seed in 0..1000u64 {
        let mut rng = Rng::new(seed);
        let mut m = created();
        let mut world = World::default();
        let mut now = Duration::ZERO;
        // Set by an accepted Stop, cleared by an accepted Start/Resume/Restart.
        let mut user_stopped = false;
        let mut trace: Vec<String> = Vec::new();
        for step in 0..400 {
            now += Duration::from_millis(rng.below(2000));
            let event = random_event(&mut rng, &m, &world);
            let before = m.clone();
            let result = m.apply(event.clone(), now);
            trace.push(format!("{step}: {event:?} -> {result:?}"));
            let ctx = || {
                format!(
                    "seed {seed}, step {step}: {event:?}\nbefore: {before:?}\nafter: {m:?}\ntrace:\n{}",
                    trace[trace.len().saturating_sub(12)..].join("\n")
                )
            };
            let fx = match result {
                Ok(fx) => fx,
                Err(_) => {
                    assert_eq!(m, before, "a refusal changed the machine: {}", ctx());
                    continue;
                }
            };
            if let Event::Exited { generation, .. } = &event {
                world.live.retain(|g| g != generation);
            }
            if let Event::Fired(t) = &event {
                world.timers.retain(|x| x != t);
            }
            if let Event::SpawnFailed { generation, .. } = &event {
                world.live.retain(|g| g != generation);
            }
            // A store failure that skipped a spawn is modelled by SpawnFailed; a random
            // StoreFailed never skips one.
            let mut persisted_generation = before.generation;
            for e in &fx {
                match e {
                    Effect::Persist { .. } => persisted_generation = m.generation,
                    Effect::Spawn { generation } => {
                        // 1. One live worker process at most.
                        assert!(
                            world.live.is_empty(),
                            "spawn while {:?} live: {}",
                            world.live,
                            ctx()
                        );
                        // 2. Its generation is new, current and persisted first.
                        assert_eq!(*generation, m.generation, "{}", ctx());
                        assert!(
                            world.spawned.last().is_none_or(|g| g < generation),
                            "{}",
                            ctx()
                        );
                        assert_eq!(persisted_generation, *generation, "{}", ctx());
                        // 4. A stopped pipeline stays stopped.
                        assert!(!user_stopped || is_resume_like(&event), "{}", ctx());
                        world.live.push(*generation);
                        world.spawned.push(*generation);
                    }
                    Effect::Send {
                        generation,
                        command: Command::Commit { allowed: true, .. },
                    } => {
                        // 2. Only the current, attached, unkilled generation commits.
                        let w = m.worker.as_ref().expect("a worker");
                        assert_eq!(*generation, m.generation, "{}", ctx());
                        assert!(w.attached && !w.killed, "{}", ctx());
                        assert!(world.live.contains(generation), "{}", ctx());
                    }
                    Effect::Accept { generation, .. } => {
                        assert_eq!(*generation, m.generation, "{}", ctx());
                        assert!(world.live.contains(generation), "{}", ctx());
                    }
                    Effect::Arm { timer, .. } => world.timers.push(*timer),
                    _ => {}
                }
            }
            // 3. Only a command leaves a terminal state.
            let command = matches!(
                event,
                Event::Start
                    | Event::Resume(_)
                    | Event::Restart(_)
                    | Event::Stop(_)
                    | Event::Delete
            );
            if before.state.is_terminal() && !command {
                assert_eq!(m.state, before.state, "{}", ctx());
            }
            if matches!(event, Event::Stop(_)) {
                user_stopped = true;
            } else if is_resume_like(&event) {
                user_stopped = false;
            }
            // 4. A stopped pipeline stays stopped.
            if user_stopped {
                assert_eq!(m.desired, Desired::Stopped, "{}", ctx());
                assert!(
                    matches!(
                        m.state,
                        State::Stopping | State::Stopped | State::Failed | State::Finished
                    ),
                    "{}",
                    ctx()
                );
            }
            // The machine's worker is the one live process, if any.
            if let Some(w) = &m.worker {
                assert_eq!(w.generation, m.generation, "{}", ctx());
            }
            for g in &world.live {
                assert_eq!(
                    m.worker.as_ref().map(|w| w.generation),
                    Some(*g),
                    "{}",
                    ctx()
                );
            }
            visited.insert(m.state);
            spawns += fx
                .iter()
                .filter(|e| matches!(e, Effect::Spawn { .. }))
                .count();
            commits += fx
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::Send {
                            command: Command::Commit { allowed: true, .. },
                            ..
                        }
                    )
                })
                .count();
            if m.is_deleted() {
                break;
            }
        }
    }
    for state in State::ALL {
        assert!(visited.contains(&state), "no sequence reached {state}");
    }
    assert!(
        spawns > 2000 && commits > 100,
        "{spawns} spawns, {commits} commits"
    );
}
