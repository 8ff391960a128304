//! The .deb (issue 12): packaging/build-deb.sh packages the binaries this test run built, the
//! package is unpacked with `dpkg -x` into a root (`dpkg -i` would change the machine that runs
//! the tests), and the files are where the unit expects them; the unit verifies clean, the
//! example configuration is one arroyod accepts, and the maintainer scripts parse.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
    // The binaries of this build: arroyoctl is built beside arroyod by `cargo test --workspace`.
    harness::arroyoctl_bin();
    let bin_dir = harness::arroyod_bin().parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let deb = run(Command::new(repo().join("packaging/build-deb.sh"))
        .arg(&bin_dir)
        .arg(&out)
        .arg("--fast"));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.exists(), "{}", deb.display());

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
