//! Regression tests of issue 9's daemon defects, through the real binaries: racing commands,
//! bounds, names, a daemon lost during a call, lost metadata, a full disk.

mod harness;

use std::process::{Child, Output, Stdio};

use harness::{DEADLINE, TestDaemon, alive, parent_of, wait_until};

const UNBOUNDED: &str = "CREATE TABLE impulse WITH (connector='impulse', event_rate='100'); SELECT counter FROM impulse;";

/// The live `arroyod worker` processes whose parent is `daemon`.
fn workers_of(daemon: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            parent_of(*pid) == Some(daemon)
                && alive(*pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"worker"))
        })
        .collect()
}

/// Starts `arroyoctl ARGS` for each entry, all at once; waits for them, checking meanwhile
/// that the daemon never runs more than one worker.
fn race(d: &TestDaemon, commands: &[&[&str]]) -> Vec<Output> {
    let children: Vec<Child> = commands
        .iter()
        .map(|args| {
            d.ctl_command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let pid = child.id();
        loop {
            let live = workers_of(d.pid());
            assert!(live.len() <= 1, "workers {live:?} run at once");
            if !alive(pid) {
                break;
            }
        }
        outputs.push(child.wait_with_output().unwrap());
    }
    outputs
}

fn generation(d: &TestDaemon, id: &str) -> u64 {
    d.status(id)["generation"].as_u64().unwrap()
}

/// Issue 9.5: concurrent resumes could start two generations and let the older take the slot
/// (stuck Scheduling, a stop that hung). Commands on one pipeline are now applied in order.
#[test]
fn racing_resumes_and_stops_start_one_generation_and_stop_still_works() {
    let d = TestDaemon::start();
    let id = d.submit("race", UNBOUNDED);
    d.wait_state(&id, "Running");
    d.ctl_ok(&["stop", &id]);
    for _round in 0..3 {
        let before = generation(&d, &id);
        let resume: &[&str] = &["resume", &id];
        let resumes = race(&d, &[resume; 10]);
        let won = resumes.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{resumes:?}");
        for lost in resumes.iter().filter(|o| !o.status.success()) {
            let stderr = String::from_utf8_lossy(&lost.stderr);
            assert_eq!(lost.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("only a stopped, failed or finished"),
                "{stderr}"
            );
        }
        let s = d.wait_state(&id, "Running");
        assert_eq!(s["generation"].as_u64().unwrap(), before + 1);
        assert_eq!(
            workers_of(d.pid()),
            vec![s["worker_pid"].as_u64().unwrap() as u32]
        );

        // Resumes and stops mixed: whatever wins, one worker at most, and a stop works.
        let before = generation(&d, &id);
        let stop: &[&str] = &["stop", &id, "--no-wait"];
        let mixed: Vec<&[&str]> = (0..8)
            .map(|i| if i % 2 == 0 { resume } else { stop })
            .collect();
        let outputs = race(&d, &mixed);
        let resumed = outputs
            .iter()
            .zip(&mixed)
            .filter(|(o, args)| args[0] == "resume" && o.status.success())
            .count() as u64;
        let out = d.ctl_ok(&["stop", &id]);
        assert!(out.contains("Stopped"), "{out}");
        assert!(generation(&d, &id) <= before + resumed);
        wait_until(DEADLINE, "every worker to exit", || {
            workers_of(d.pid()).is_empty().then_some(())
        });
    }
}
