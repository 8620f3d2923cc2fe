#!/usr/bin/env bash
# Makes the device image: a tarball with the stripped scission-device binary for TARGET, a
# documented configuration (device.toml), a systemd unit running `serve`, an example image, the enrolment instructions and an install script.
#   cross/package-device.sh aarch64-unknown-linux-gnu [path/to/scission-device]
# Without a path, the binary is taken from target/TARGET/device (build it first with
# `cross build --profile device -p scission-device --target TARGET`, or cross/check-arm.sh here).
set -euo pipefail
target=${1:?usage: package-device.sh TARGET [BINARY]}
root=$(cd "$(dirname "$0")/.." && pwd)
binary=${2:-${CARGO_TARGET_DIR:-$root/target}/$target/device/scission-device}
[ -x "$binary" ] || { echo "no binary at $binary: build it first" >&2; exit 1; }
case $target in
  aarch64-*) strip=aarch64-linux-gnu-strip ;;
  armv7-*) strip=arm-linux-gnueabihf-strip ;;
  *) strip="strip" ;;
esac
command -v "$strip" >/dev/null || strip="strip"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
name=scission-device-$target
mkdir -p "$stage/$name/bin"
cp "$binary" "$stage/$name/bin/scission-device"
"$strip" "$stage/$name/bin/scission-device" 2>/dev/null || echo "note: $strip could not strip the binary; shipping it as is"
cp "$root/cross/image/"{install.sh,device.toml,scission-device.service,enroll.txt} "$stage/$name/"
cp "$root/assets/example.png" "$stage/$name/"
out=${OUT_DIR:-$root/target/images}
mkdir -p "$out"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
size=$(stat -c %s "$stage/$name/bin/scission-device")
echo "$out/$name.tar.gz (stripped binary: $((size / 1024 / 1024)) MiB)"
