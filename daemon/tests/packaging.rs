//! The .deb (issue 12): packaging/build-deb.sh packages the binaries this test run built, the
//! package is unpacked with `dpkg -x` into a root, and the files are where the unit expects
//! them; the unit verifies clean, the example configuration is one arroyod accepts, and the
//! maintainer scripts parse. Then it is installed with `dpkg -i` into a root of its own
//! (`--root`, scripts run chrootless with `DPKG_ROOT`), where systemd is not PID 1: the
//! postinst takes its adduser path (adduser, getent and chown are stand-ins that record their
//! arguments, so the machine that runs the tests gains no user), and a purge removes the state.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the .deb of this test run's binaries into `out`; its path.
fn build_deb(out: &Path) -> PathBuf {
    // The binaries of this build: arroyoctl is built beside arroyod by `cargo test --workspace`.
    harness::arroyoctl_bin();
    let bin_dir = harness::arroyod_bin().parent().unwrap().to_path_buf();
    let deb = run(Command::new(repo().join("packaging/build-deb.sh"))
        .arg(&bin_dir)
        .arg(out)
        .arg("--fast"));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.exists(), "{}", deb.display());
    deb
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_deb_holds_what_the_unit_expects_and_the_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&dir.path().join("out"));

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: arroyod"), "{info}");

    let root = dir.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let unit_path = root.join("usr/lib/systemd/system/arroyod.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    // The program the unit starts is in the package, executable and stripped of debug info.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart");
    let program = exec.split_whitespace().next().unwrap();
    assert_eq!(program, "/usr/bin/arroyod");
    for bin in ["usr/bin/arroyod", "usr/bin/arroyoctl"] {
        let meta = std::fs::metadata(root.join(bin)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{bin}");
        let sections = run(Command::new("readelf").arg("-S").arg(root.join(bin)));
        assert!(!sections.contains(".debug_line"), "{bin} is not stripped");
    }
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    for file in [
        "usr/share/man/man1/arroyod.1.gz",
        "usr/share/man/man1/arroyod-run.1.gz",
        "usr/share/bash-completion/completions/arroyod",
        "usr/share/zsh/vendor-completions/_arroyod",
        "usr/share/fish/vendor_completions.d/arroyod.fish",
        "usr/lib/sysusers.d/arroyod.conf",
        "usr/lib/tmpfiles.d/arroyod.conf",
        "etc/arroyod/arroyod.toml",
        "usr/share/man/man1/arroyoctl.1.gz",
        "usr/share/man/man1/arroyoctl-tail.1.gz",
        "usr/share/bash-completion/completions/arroyoctl",
        "usr/share/zsh/vendor-completions/_arroyoctl",
        "usr/share/fish/vendor_completions.d/arroyoctl.fish",
    ] {
        assert!(root.join(file).is_file(), "{file} is missing");
    }
    // The state directory of the tmpfiles entry is the unit's data dir.
    let tmpfiles = std::fs::read_to_string(root.join("usr/lib/tmpfiles.d/arroyod.conf")).unwrap();
    assert!(tmpfiles.contains("/var/lib/arroyod  0700 arroyod arroyod"));
    assert!(exec.contains("--data-dir /var/lib/arroyod"), "{exec}");

    // The example configuration is accepted by the packaged daemon.
    let config = run(Command::new(root.join("usr/bin/arroyod"))
        .arg("config")
        .arg("--config")
        .arg(root.join("etc/arroyod/arroyod.toml")));
    assert!(config.contains("/var/lib/arroyod"), "{config}");

    // The maintainer scripts parse with the shell dpkg runs them with.
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/arroyod/arroyod.toml");
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }

    // systemd-analyze verify, with ExecStart pointing into the unpacked root (it checks that
    // the program exists) and no man page lookups.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let verify_dir = dir.path().join("verify");
        std::fs::create_dir(&verify_dir).unwrap();
        let moved = unit.replace(
            "ExecStart=/usr/bin/arroyod",
            &format!("ExecStart={}", root.join("usr/bin/arroyod").display()),
        );
        std::fs::write(verify_dir.join("arroyod.service"), moved).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(verify_dir.join("arroyod.service"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    }
}

/// A stand-in for a command of the postinst: it appends its name and arguments to `log`, and
/// exits with `status`.
fn stand_in(dir: &Path, name: &str, log: &Path, status: i32) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{name} $*\" >>'{}'\nexit {status}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_package_installs_and_purges_where_systemd_is_not_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&dir.path().join("out"));
    // An empty dpkg database in a root of its own; no run/systemd/system in it.
    let root = dir.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let bin = dir.path().join("stand-ins");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("calls.log");
    stand_in(&bin, "adduser", &calls, 0);
    // No such user yet.
    stand_in(&bin, "getent", &calls, 2);
    stand_in(&bin, "chown", &calls, 0);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
                "--log=/dev/null",
            ])
            .args(args)
            .env("PATH", &path);
        run(&mut cmd)
    };
    dpkg(&["-i", deb.to_str().unwrap()]);

    let calls_made = std::fs::read_to_string(&calls).unwrap();
    let state = root.join("var/lib/arroyod");
    assert!(
        calls_made
            .contains("adduser --system --group --home /var/lib/arroyod --no-create-home arroyod"),
        "{calls_made}"
    );
    assert!(
        calls_made.contains(&format!("chown arroyod:arroyod {}", state.display())),
        "{calls_made}"
    );
    assert!(!calls_made.contains("systemctl"), "{calls_made}");
    assert!(state.is_dir());
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in [
        "usr/bin/arroyod",
        "usr/bin/arroyoctl",
        "usr/lib/systemd/system/arroyod.service",
        "etc/arroyod/arroyod.toml",
        "usr/share/man/man1/arroyod.1.gz",
    ] {
        assert!(root.join(file).is_file(), "{file} is not installed");
    }
    let status = dpkg(&["--status", "arroyod"]);
    assert!(status.contains("Status: install ok installed"), "{status}");

    // A purge takes the state and the configuration with it.
    dpkg(&["--purge", "arroyod"]);
    assert!(!state.exists());
    assert!(!root.join("etc/arroyod").exists());
    assert!(!root.join("usr/bin/arroyod").exists());
}
