#!/usr/bin/env bash
# Builds the release binaries (profile.release: stripped, no debug info) and packages them as
# a .deb in target/deb. Outside CI: a release build takes long (about 40 min on 2 cores).
#
#   packaging/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p arroyod -p arroyoctl
ls -l "$target/release/arroyod" "$target/release/arroyoctl"
packaging/build-deb.sh "$target/release" "$target/deb"
