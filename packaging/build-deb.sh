#!/usr/bin/env bash
# Builds the arroyod .deb from binaries already built: no cargo build here, so CI packages the
# debug binaries of its test build and a release packaging run packages release binaries.
#
#   packaging/build-deb.sh BIN_DIR OUT_DIR [--fast]
#
# BIN_DIR holds arroyod and arroyoctl (e.g. $CARGO_TARGET_DIR/debug or .../release); the .deb
# is written to OUT_DIR and its path printed. The binaries are stripped when staged. --fast
# compresses with gzip -1 (CI); the default is xz. Release packaging: packaging/release.sh.
#
# Layout (what arroyod.service expects): /usr/bin/arroyod, /usr/bin/arroyoctl,
# /usr/lib/systemd/system/arroyod.service, /usr/lib/sysusers.d/arroyod.conf,
# /usr/lib/tmpfiles.d/arroyod.conf, /etc/arroyod/arroyod.toml (a conffile),
# /usr/share/man/man1/arroyod*.1.gz and arroyoctl*.1.gz, completions of both for bash, zsh
# and fish.
set -euo pipefail

bin_dir=${1:?usage: build-deb.sh BIN_DIR OUT_DIR [--fast]}
out_dir=${2:?usage: build-deb.sh BIN_DIR OUT_DIR [--fast]}
compress=(-Zxz)
[[ ${3:-} == --fast ]] && compress=(-Zgzip -z1)

here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
    "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/etc/arroyod" \
    "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
    "$root/usr/share/doc/arroyod"

for b in arroyod arroyoctl; do
    strip --strip-all -o "$root/usr/bin/$b" "$bin_dir/$b"
    chmod 0755 "$root/usr/bin/$b"
done
install -m 0644 "$here/arroyod.service" "$root/usr/lib/systemd/system/arroyod.service"
install -m 0644 "$here/arroyod.sysusers" "$root/usr/lib/sysusers.d/arroyod.conf"
install -m 0644 "$here/arroyod.tmpfiles" "$root/usr/lib/tmpfiles.d/arroyod.conf"
install -m 0644 "$here/arroyod.toml" "$root/etc/arroyod/arroyod.toml"
install -m 0644 "$here/../README.md" "$root/usr/share/doc/arroyod/README.md"

# Man pages and completions come from the binaries' clap definitions.
for b in arroyod arroyoctl; do
    "$root/usr/bin/$b" manpages "$stage/man"
    "$root/usr/bin/$b" completions bash >"$root/usr/share/bash-completion/completions/$b"
    "$root/usr/bin/$b" completions zsh >"$root/usr/share/zsh/vendor-completions/_$b"
    "$root/usr/bin/$b" completions fish >"$root/usr/share/fish/vendor_completions.d/$b.fish"
done
for page in "$stage"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done

installed_size=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: arroyod
Version: $version
Architecture: $arch
Maintainer: arroyod maintainers <arroyod@localhost>
Installed-Size: $installed_size
Depends: libc6
Section: database
Priority: optional
Description: streaming SQL engine as a local daemon
 arroyod runs Arroyo-dialect streaming SQL pipelines with checkpoints;
 arroyoctl is its client.
EOF
echo /etc/arroyod/arroyod.toml >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done

mkdir -p "$out_dir"
deb="$out_dir/arroyod_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
