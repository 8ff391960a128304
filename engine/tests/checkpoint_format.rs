//! Checkpoints written by earlier binaries restore, and the output goes on exactly where it
//! stopped: nothing lost, nothing repeated.
//!
//! Each fixture under `tests/fixtures/checkpoint-v<format>/` holds `query.sql` (Nexmark with a
//! fixed first event time, so every run emits the same rows), `state/` (the newest checkpoint
//! of a run at parallelism 2 stopped with a checkpoint part-way) and `output-before.jsonl`
//! (what that run emitted before it stopped). A run restored from `state/` must emit exactly
//! the rows of a full run less those.
//!
//! `checkpoint-v0` was written by the first arroyod (unversioned MANIFEST, FNV-1a 64, nodes by
//! index); `checkpoint-v1` by the binary that introduced format 1. To write a new fixture, set
//! `ARROYO_WRITE_FIXTURE=<dir>` (with `<dir>/query.sql` in it) and run
//! `a_checkpoint_written_now_restores_and_the_output_goes_on_exactly`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arroyod_engine::job::{self, Checkpointing, JobSpec, Outcome, StopMode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Checkpoints under `state`, every 100 ms.
fn checkpointing(state: &Path) -> Checkpointing {
    Checkpointing {
        state: state.display().to_string(),
        interval: Duration::from_millis(100),
        gate: None,
        expected_epoch: 0,
    }
}

/// The epochs of the complete checkpoints under `state`, newest first.
async fn epochs(state: &Path) -> Vec<u64> {
    job::checkpoints(&state.display().to_string())
        .await
        .unwrap()
}

/// Runs `sql` at `parallelism`: to its end, or (with `stop_after`) until that many
/// checkpoints completed, then stops with a checkpoint. Returns the rows of the default sink.
async fn rows(
    sql: &str,
    parallelism: usize,
    checkpointing: Option<Checkpointing>,
    stop_after: Option<u64>,
) -> Vec<String> {
    let planned = arroyod_engine::sql::plan(sql).expect("the fixture's query plans");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let spec = JobSpec {
        parallelism,
        checkpointing,
        preview: Some(tx),
        ..JobSpec::default()
    };
    let running = job::start(&planned, spec).await.unwrap();
    let collect = async {
        let mut all = Vec::new();
        while let Some(rows) = rx.recv().await {
            all.extend(rows);
        }
        all
    };
    let finish = async {
        if let Some(epochs) = stop_after {
            let mut done = running.checkpoints();
            let first = done.borrow().map_or(0, |c| c.epoch);
            done.wait_for(|c| c.is_some_and(|c| c.epoch >= first + epochs))
                .await
                .unwrap();
            running.stopper().request(StopMode::Checkpoint);
        }
        let expected = match stop_after {
            Some(_) => Outcome::Stopped,
            None => Outcome::Finished,
        };
        assert_eq!(running.wait().await.unwrap(), expected);
    };
    let (all, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(collect, finish)
    })
    .await
    .expect("the run ended in time");
    all
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// Restores a copy of `dir`'s checkpoint at each parallelism of `at`: the rows before the
/// stop and the rows after the restore are those of a full run, each once.
async fn restores_exactly(dir: &Path, at: &[usize]) {
    let sql = std::fs::read_to_string(dir.join("query.sql")).unwrap();
    let full = sorted(rows(&sql, 2, None, None).await);
    let before: Vec<String> = std::fs::read_to_string(dir.join("output-before.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        !before.is_empty() && before.len() < full.len(),
        "{} rows before the stop",
        before.len()
    );
    for &p in at {
        let copy = tempfile::tempdir().unwrap();
        let state = copy.path().join("state");
        copy_dir(&dir.join("state"), &state);
        assert_eq!(
            epochs(&state).await.len(),
            1,
            "the fixture has one checkpoint"
        );
        let after = rows(&sql, p, Some(checkpointing(&state)), None).await;
        let both = sorted(before.iter().cloned().chain(after).collect());
        let missing = full.iter().find(|r| both.binary_search(r).is_err());
        assert!(
            both == full,
            "restored at parallelism {p}: {} rows for {}; first missing: {missing:?}",
            both.len(),
            full.len(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_format_0_restores_and_the_output_goes_on_exactly() {
    restores_exactly(&fixture("checkpoint-v0"), &[1, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_format_1_restores_and_the_output_goes_on_exactly() {
    restores_exactly(&fixture("checkpoint-v1"), &[1, 3]).await;
}

/// Writes a checkpoint with this binary (into `ARROYO_WRITE_FIXTURE` when set, to make a new
/// fixture, else into a temporary directory) and restores it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_written_now_restores_and_the_output_goes_on_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("ARROYO_WRITE_FIXTURE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            std::fs::copy(
                fixture("checkpoint-v1").join("query.sql"),
                temp.path().join("query.sql"),
            )
            .unwrap();
            temp.path().to_path_buf()
        }
    };
    let sql = std::fs::read_to_string(dir.join("query.sql")).unwrap();
    let state = dir.join("state");
    let before = rows(&sql, 2, Some(checkpointing(&state)), Some(12)).await;
    let mut text = before.join("\n");
    text.push('\n');
    std::fs::write(dir.join("output-before.jsonl"), text).unwrap();
    // Only the newest checkpoint is kept: the one the stop wrote.
    let newest = format!("{:020}", epochs(&state).await[0]);
    for entry in std::fs::read_dir(state.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().and_then(|n| n.to_str()) != Some(newest.as_str()) {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
    restores_exactly(&dir, &[2]).await;
}
