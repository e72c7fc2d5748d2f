#!/usr/bin/env bash
# Build River's Debian package: river_<version>-1_<arch>.deb in target/debian/
# (or the directory given as $1). Stages a tree and runs
# `dpkg-deb --build --root-owner-group`: no cargo-deb, no root needed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
packaging="$repo/packaging"
cd "$repo"
umask 022

out_dir=${1:-"$repo/target/debian"}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

for tool in dpkg-deb dpkg-shlibdeps strip gzip cargo; do
    command -v "$tool" >/dev/null || { echo "build-deb: $tool is missing (scripts/install-deps)" >&2; exit 1; }
done

# The version of [workspace.package] in the root Cargo.toml; -1: first Debian
# revision (so the changelog is changelog.Debian.gz, as for a non-native package).
upstream_version=$(awk '
    /^\[/ { section = $0 }
    section == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)
[ -n "$upstream_version" ] || { echo "build-deb: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
# RIVER_DEB_VERSION=0.1.0+up1 builds the same tree as another version (the
# binaries report it too): packaging/test.sh upgrades from one to the other.
if [ -n "${RIVER_DEB_VERSION:-}" ]; then
    upstream_version=$RIVER_DEB_VERSION
    export RIVER_BUILD_VERSION="$RIVER_DEB_VERSION"
fi
version="$upstream_version-1"
arch=$(dpkg --print-architecture)
deb="$out_dir/river_${version}_${arch}.deb"

# Reproducible dates (man pages, changelog): the last commit's time.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

echo "build-deb: cargo build --release (river, riverctl, river-docgen)"
build_start=$(date +%s)
cargo build --release -p river -p riverctl -p river-docgen
echo "build-deb: release build took $(( $(date +%s) - build_start )) s"
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
release="${target_dir:-$repo/target}/release"

stage=$(mktemp -d "$out_dir/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

# Binaries, stripped as dh_strip does (the release profile keeps debug info).
install -d "$stage/usr/sbin" "$stage/usr/bin"
strip --remove-section=.comment --remove-section=.note -o "$stage/usr/sbin/river" "$release/river"
strip --remove-section=.comment --remove-section=.note -o "$stage/usr/bin/riverctl" "$release/riverctl"
chmod 0755 "$stage/usr/sbin/river" "$stage/usr/bin/riverctl"

# Configuration and service files.
install -D -m 0644 "$packaging/river.kdl" "$stage/etc/river/river.kdl"
install -D -m 0755 "$packaging/river.init" "$stage/etc/init.d/river"
install -D -m 0644 "$packaging/river.default" "$stage/etc/default/river"
install -D -m 0644 "$packaging/river.logrotate" "$stage/etc/logrotate.d/river"
install -D -m 0644 "$packaging/river.service" "$stage/lib/systemd/system/river.service"
# The Grafana dashboard for the metrics endpoint (`system { metrics }`).
install -D -m 0644 "$packaging/river-dashboard.json" "$stage/usr/share/river/river-dashboard.json"

# Man pages and completions, from the clap definitions the binaries parse.
generated=$(mktemp -d)
trap 'rm -rf "$stage" "$generated"' EXIT
"$release/river-docgen" "$generated" >/dev/null
install -d "$stage/usr/share/man/man8"
for page in "$generated"/man/*.8; do
    gzip -9n -c "$page" >"$stage/usr/share/man/man8/$(basename "$page").gz"
done
install -D -m 0644 "$generated/completions/bash/river.bash" "$stage/usr/share/bash-completion/completions/river"
install -D -m 0644 "$generated/completions/bash/riverctl.bash" "$stage/usr/share/bash-completion/completions/riverctl"
install -D -m 0644 "$generated/completions/zsh/_river" "$stage/usr/share/zsh/vendor-completions/_river"
install -D -m 0644 "$generated/completions/zsh/_riverctl" "$stage/usr/share/zsh/vendor-completions/_riverctl"
install -D -m 0644 "$generated/completions/fish/river.fish" "$stage/usr/share/fish/vendor_completions.d/river.fish"
install -D -m 0644 "$generated/completions/fish/riverctl.fish" "$stage/usr/share/fish/vendor_completions.d/riverctl.fish"

# Documentation.
doc="$stage/usr/share/doc/river"
install -D -m 0644 "$packaging/debian/copyright" "$doc/copyright"
changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$changelog_date/" "$packaging/debian/changelog.in" \
    | gzip -9n >"$doc/changelog.Debian.gz"
gzip -9n -c README.md >"$doc/README.md.gz"

# Depends: the shared libraries the binaries link (libc6, libgcc-s1), as
# dpkg-shlibdeps computes them, plus adduser for postinst.
shlib_dir=$(mktemp -d)
trap 'rm -rf "$stage" "$generated" "$shlib_dir"' EXIT
mkdir "$shlib_dir/debian"
printf 'Source: river\n\nPackage: river\nArchitecture: any\n' >"$shlib_dir/debian/control"
shlibs=$(cd "$shlib_dir" && dpkg-shlibdeps -O -e"$stage/usr/sbin/river" -e"$stage/usr/bin/riverctl" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
depends="adduser, $shlibs"

# Control area.
install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
    "$packaging/debian/control.in" >"$stage/DEBIAN/control"
install -m 0644 "$packaging/debian/conffiles" "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$packaging/debian/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"

# Every file root:root (--root-owner-group), directories 0755.
find "$stage" -type d -exec chmod 0755 {} +
rm -f "$deb"
dpkg-deb --build --root-owner-group -Zxz "$stage" "$deb" >/dev/null
echo "build-deb: $deb"
