//! Corrupt checkpoints (issue 9.13 and its siblings), through `arroyod run`: each kind of
//! damage either falls back to the newest valid checkpoint (saying which, and why the newer
//! one is passed over) when no sink committed output past it, or fails with a clear message
//! naming the file; never a panic, never a silent start from nothing. Damage that leaves the
//! newest checkpoint whole (a stray file, an interrupted newer epoch) restores it.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use harness::fault::{
    complete_epochs, counters_query, exactly_once, files_query, flip_a_byte, interrupt,
    largest_file, mode, run_to_three_checkpoints, start_run, tally, wait_rows,
};
use harness::{DEADLINE, arroyod_bin, counters_in, path_str, wait_exit};

/// What a run on the damaged state must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Restore the checkpoint before the newest, saying so.
    FallsBack,
    /// Restore the newest checkpoint.
    Newest,
    /// Exit 1 with an error naming the file.
    Refused,
}

/// The newest epoch's directory, its largest state file, and the checkpoints directory.
struct Target {
    epoch: PathBuf,
    file: PathBuf,
    older: PathBuf,
}

impl Target {
    /// The file's name as the MANIFEST and messages give it (the local store keeps a `/` in
    /// a name as `%2F`).
    fn name(&self) -> String {
        self.file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("%2F", "/")
    }

    fn manifest(&self) -> PathBuf {
        self.epoch.join("MANIFEST")
    }

    /// Rewrites the MANIFEST line of the target file with `edit(length, checksum)`.
    fn edit_manifest_line(&self, edit: impl Fn(&str, &str) -> (String, String)) {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        let name = self.name();
        let edited: Vec<String> = text
            .lines()
            .map(|l| {
                let parts: Vec<&str> = l.splitn(3, ' ').collect();
                if parts.len() == 3 && parts[2] == name {
                    let (length, checksum) = edit(parts[0], parts[1]);
                    format!("{length} {checksum} {name}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert_ne!(
            edited.join("\n") + "\n",
            text,
            "no MANIFEST line for {name}"
        );
        std::fs::write(self.manifest(), edited.join("\n") + "\n").unwrap();
    }
}

/// One kind of damage: its name, what it does to the newest checkpoint, what the run must
/// do, and what its output must say (`{file}`: the damaged file's name in the MANIFEST,
/// `{path}`: its path).
struct Case {
    name: &'static str,
    damage: fn(&Target),
    expect: Expect,
    says: &'static [&'static str],
}

fn epoch_of(dir: &Path) -> u64 {
    dir.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

const CASES: &[Case] = &[
    Case {
        name: "truncated data file",
        damage: |t| {
            let bytes = std::fs::read(&t.file).unwrap();
            std::fs::write(&t.file, &bytes[..bytes.len() / 2]).unwrap();
        },
        expect: Expect::FallsBack,
        says: &["its file {file} is missing or not"],
    },
    Case {
        name: "flipped byte",
        damage: |t| flip_a_byte(&t.epoch),
        expect: Expect::FallsBack,
        says: &["{file} is corrupt: checksum differs from the MANIFEST"],
    },
    Case {
        name: "missing MANIFEST",
        damage: |t| std::fs::remove_file(t.manifest()).unwrap(),
        expect: Expect::FallsBack,
        says: &["it has no MANIFEST"],
    },
    Case {
        name: "MANIFEST garbage",
        damage: |t| std::fs::write(t.manifest(), b"\x00\xff garbage \xfe\n\x01").unwrap(),
        expect: Expect::FallsBack,
        says: &["its MANIFEST does not parse"],
    },
    Case {
        name: "empty MANIFEST",
        damage: |t| std::fs::write(t.manifest(), b"").unwrap(),
        expect: Expect::FallsBack,
        says: &["its MANIFEST does not parse"],
    },
    Case {
        name: "wrong checksum in the MANIFEST",
        damage: |t| {
            t.edit_manifest_line(|length, checksum| {
                let last = checksum.chars().last().unwrap();
                let other = if last == '0' { '1' } else { '0' };
                (
                    length.to_string(),
                    format!("{}{other}", &checksum[..checksum.len() - 1]),
                )
            })
        },
        expect: Expect::FallsBack,
        says: &["{file} is corrupt: checksum differs from the MANIFEST"],
    },
    Case {
        name: "missing operator file",
        damage: |t| std::fs::remove_file(&t.file).unwrap(),
        expect: Expect::FallsBack,
        says: &["its file {file} is missing or not"],
    },
    Case {
        name: "zero-length file",
        damage: |t| std::fs::write(&t.file, b"").unwrap(),
        expect: Expect::FallsBack,
        says: &["its file {file} is missing or not"],
    },
    Case {
        name: "MANIFEST pointing past the data",
        damage: |t| {
            t.edit_manifest_line(|length, checksum| {
                (
                    (length.parse::<u64>().unwrap() + 100).to_string(),
                    checksum.to_string(),
                )
            })
        },
        expect: Expect::FallsBack,
        says: &["its file {file} is missing or not"],
    },
    Case {
        name: "MANIFEST of another epoch",
        damage: |t| {
            std::fs::copy(t.older.join("MANIFEST"), t.manifest())
                .map(drop)
                .unwrap()
        },
        expect: Expect::FallsBack,
        says: &["its MANIFEST is of epoch"],
    },
    Case {
        name: "wrong format version",
        damage: |t| {
            let text = std::fs::read_to_string(t.manifest()).unwrap();
            let rest = text.split_once('\n').unwrap().1;
            std::fs::write(t.manifest(), format!("arroyod checkpoint 9\n{rest}")).unwrap();
        },
        expect: Expect::Refused,
        says: &["MANIFEST has checkpoint format 9; this arroyod reads formats up to"],
    },
    Case {
        name: "permission denied",
        damage: |t| {
            std::fs::set_permissions(&t.file, std::fs::Permissions::from_mode(0o000)).unwrap()
        },
        expect: Expect::Refused,
        says: &["reading {path}", "Permission denied"],
    },
    Case {
        name: "extra unknown file",
        damage: |t| std::fs::write(t.epoch.join("stray.bin"), b"not ours").unwrap(),
        expect: Expect::Newest,
        says: &[
            "holds files its MANIFEST does not list, which are ignored",
            "stray.bin",
        ],
    },
    Case {
        name: "newer epoch directory without a MANIFEST",
        damage: |t| {
            let newer = t
                .epoch
                .with_file_name(format!("{:020}", epoch_of(&t.epoch) + 1));
            std::fs::create_dir(&newer).unwrap();
            std::fs::copy(&t.file, newer.join(t.file.file_name().unwrap())).unwrap();
        },
        expect: Expect::Newest,
        says: &[],
    },
];

/// `cp -a from to`, replacing `to`.
fn copy_tree(from: &Path, to: &Path) {
    if to.is_dir() {
        std::fs::remove_dir_all(to).unwrap();
    } else if to.exists() {
        std::fs::remove_file(to).unwrap();
    }
    let status = Command::new("cp")
        .args(["-a", path_str(from), path_str(to)])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `arroyod run -s STATE QUERY` as a user without the privilege to read a file it may not
/// (a user namespace whose only user owns our files, without capabilities: even root's
/// reads are checked against file modes there), in its own process group.
fn start_run_unprivileged(state: &Path, query: &Path, log: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new("unshare")
        .args(["--user", "--map-user=65534", "--map-group=65534", "--"])
        .arg(arroyod_bin())
        .args(["run", "-s", path_str(state), path_str(query)])
        .env_remove("RUST_LOG")
        .env("ARROYO_CHECKPOINT_INTERVAL", "200ms")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .process_group(0)
        .spawn()
        .expect("unshare (util-linux) is missing")
}

/// Every kind of damage of the newest of three checkpoints, each on a fresh copy of the same
/// state and output, run with a `single_file` sink (which rewinds to any checkpoint).
#[test]
fn each_kind_of_corrupt_checkpoint_falls_back_or_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let query = counters_query(dir.path(), &out);
    let state = dir.path().join("state");
    run_to_three_checkpoints(&state, &query, &dir.path().join("first.log"));
    let first = exactly_once(&out);
    let pristine = dir.path().join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    copy_tree(&state, &pristine.join("state"));
    copy_tree(&out, &pristine.join("out.json"));

    let mut figures = Vec::new();
    for case in CASES {
        copy_tree(&pristine.join("state"), &state);
        copy_tree(&pristine.join("out.json"), &out);
        let epochs = complete_epochs(&state);
        let [.., older, newest] = epochs.as_slice() else {
            panic!("{epochs:?}")
        };
        let file = largest_file(newest);
        let target = Target {
            epoch: newest.clone(),
            file,
            older: older.clone(),
        };
        (case.damage)(&target);
        let log = dir
            .path()
            .join(format!("{}.log", case.name.replace(' ', "-")));
        let mut run = if case.name == "permission denied" {
            start_run_unprivileged(&state, &query, &log)
        } else {
            start_run(&state, &query, &log)
        };
        let text = || std::fs::read_to_string(&log).unwrap();
        let status = match case.expect {
            Expect::Refused => wait_exit(&mut run, DEADLINE * 2),
            Expect::FallsBack | Expect::Newest => {
                wait_rows(&out, first + 300);
                interrupt(run)
            }
        };
        let text = text();
        let what = case.name;
        assert!(!text.contains("panicked"), "{what}: {text}");
        for says in case.says {
            let says = says
                .replace("{file}", &target.name())
                .replace("{path}", path_str(&target.file));
            assert!(text.contains(&says), "{what}: no '{says}' in:\n{text}");
        }
        let (older, newest) = (epoch_of(&target.older), epoch_of(&target.epoch));
        let fallback = format!("falling back to the newest valid checkpoint, {older}");
        match case.expect {
            Expect::Refused => {
                assert_eq!(status.code(), Some(1), "{what}: {text}");
                assert!(text.contains("error:"), "{what}: {text}");
                // Nothing was written: the output is the first run's.
                assert_eq!(exactly_once(&out), first, "{what}");
            }
            Expect::FallsBack => {
                assert!(status.success(), "{what}: {text}");
                assert!(
                    text.contains(&fallback)
                        && text.contains(&format!("checkpoint {newest} under")),
                    "{what}: {text}"
                );
            }
            Expect::Newest => {
                assert!(status.success(), "{what}: {text}");
                assert!(!text.contains("falling back"), "{what}: {text}");
            }
        }
        let t = tally(counters_in(&std::fs::read_to_string(&out).unwrap()));
        assert!(t.first.is_none(), "{what}: {t:?}");
        assert!(
            t.rows >= first,
            "{what}: {} rows after, {first} before",
            t.rows
        );
        figures.push(format!("{what}: {:?}, rows {}", case.expect, t.rows));
    }
    eprintln!(
        "corrupt checkpoints: {} kinds, lost 0, repeated 0\n  {}",
        CASES.len(),
        figures.join("\n  ")
    );
}

/// Issue 9.13 (and 9.11's checkpoint files, 0600): a corrupt newest checkpoint failed every rerun ("checksum differs") although
/// older complete ones existed. A rerun now falls back to the newest valid checkpoint when
/// every sink rewinds to it, and says which; with a sink that committed past it, it refuses,
/// saying why.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_newest_valid_one_when_sinks_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let query = counters_query(dir.path(), &out);
    let state = dir.path().join("state");
    let log = dir.path().join("run.log");
    run_to_three_checkpoints(&state, &query, &log);
    let first = exactly_once(&out);
    let epochs = complete_epochs(&state);
    // Checkpoints are the owner's only, whatever the umask (the tests run with 022).
    for epoch in &epochs {
        assert_eq!(mode(epoch), 0o700, "{}", epoch.display());
        for f in std::fs::read_dir(epoch).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
    let newest = epochs.last().unwrap();
    let newest_epoch: u64 = newest
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    flip_a_byte(newest);

    let run = start_run(&state, &query, &log);
    wait_rows(&out, first + 300);
    let status = interrupt(run);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.contains(&format!("checkpoint {newest_epoch} under"))
            && text.contains("checksum differs from the MANIFEST")
            && text.contains("falling back to the newest valid checkpoint"),
        "{text}"
    );
    let last = exactly_once(&out);
    assert!(last > first, "{first} then {last}");

    // A filesystem sink commits its files at each checkpoint for good: no fallback past them.
    let files = dir.path().join("files");
    let fs_query = files_query(dir.path(), &files);
    let fs_state = dir.path().join("fs-state");
    let fs_log = dir.path().join("fs.log");
    run_to_three_checkpoints(&fs_state, &fs_query, &fs_log);
    flip_a_byte(complete_epochs(&fs_state).last().unwrap());
    let mut run = start_run(&fs_state, &fs_query, &fs_log);
    let status = wait_exit(&mut run, DEADLINE * 2);
    let text = std::fs::read_to_string(&fs_log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("checksum differs from the MANIFEST")
            && text.contains("committed output past it"),
        "{text}"
    );
}
