#!/usr/bin/env bash
# Builds scission-device for Raspberry Pi targets on this x86-64 Debian machine without Docker
# or rustup targets, and checks it under qemu-user:
#   1. `bench` of a zoo model runs on emulated ARM;
#   2. partitioned inference with the emulated-ARM device and x86 edge/cloud servers on loopback
#      returns x86's unsplit result within float tolerance, for every split (cloud only, device
#      + edge + cloud, device + cloud, device only);
#   3. the lean device binary (slice artifacts only) runs artifacts of every real torch.onnx and
#      tf2onnx export in tests/fixtures/exports, written on x86: the whole model as one slice,
#      and the first half with x86 running the second; each result within float tolerance of
#      onnxruntime's on x86 (cross/exports-check.py).
#
#   cross/check-arm.sh [aarch64|armv7|all]     (default: aarch64)
#   cross/check-arm.sh setup                   (the toolchain only; prints its rustc version)
#
# The toolchain is Debian's rustc-web (a current rustc shipped with the standard library for
# arm64 and armhf). The compiler and its LLVM come from Debian 12's security suite (glibc 2.36,
# like this machine and Raspberry Pi OS bookworm); only the armhf standard library comes from the
# next release's build of the same version. It is unpacked into $SCISSION_ARM_DIR (default ~/.cache/scission-arm) with a
# private apt state; Debian's cross linkers and qemu-user-static come from apt. Release builds
# take about half an hour of CPU per target. Users with Docker use `cross` instead (Cross.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SCISSION_ARM_DIR:-$HOME/.cache/scission-arm}
which_targets=${1:-aarch64}
# qemu mimics a board's CPU (Pi 4); tract then finds its NEON kernels. Emulated timings are for
# correctness, not speed.
export QEMU_CPU=${QEMU_CPU:-cortex-a72}

apt_private() {
  apt-get -o Dir::State="$dir/apt" -o Dir::State::Lists="$dir/apt/lists" -o Dir::State::status="$dir/apt/status" \
    -o Dir::Cache="$dir/apt/cache" -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/apt/sources" \
    -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Architectures::=armhf -o Debug::NoLocking=1 "$@"
}

apt_cache_private() {
  apt-cache -o Dir::State="$dir/apt" -o Dir::State::Lists="$dir/apt/lists" -o Dir::State::status="$dir/apt/status" \
    -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/apt/sources" "$@"
}

toolchain() {
  [ -x "$dir/bin/rustc" ] && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static >/dev/null
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/apt/sources" "$dir/root" "$dir/debs" "$dir/bin"
  touch "$dir/apt/status"
  local mirror security
  mirror=$(awk '/^URIs:/{print $2}' /etc/apt/sources.list.d/debian.sources | grep -v security | head -1)
  security=$(awk '/^URIs:/{print $2}' /etc/apt/sources.list.d/debian.sources | grep security | head -1)
  cat > "$dir/apt/sources/rust.sources" <<EOS
Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: stable
Components: main
Architectures: armhf
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  apt_private update -qq || true
  local std llvm
  std=$(apt_cache_private depends --recurse rustc-web:amd64 | sed -n 's/^ *Depends: \(libstd-rust-web-[0-9.]*\)$/\1/p' | head -1)
  llvm=$(apt_cache_private depends --recurse rustc-web:amd64 | sed -n 's/^ *Depends: \(libllvm[0-9]*\)$/\1/p' | head -1)
  [ -n "$std" ] || { echo "rustc-web is not in the configured Debian archives" >&2; exit 1; }
  (cd "$dir/debs" && apt_private download rustc-web:amd64 "$std:amd64" libstd-rust-web-dev:amd64 "$std:arm64" libstd-rust-web-dev:arm64 ${llvm:+$llvm:amd64} \
     && { apt_private download "$std:armhf" libstd-rust-web-dev:armhf 2>/dev/null || apt_private download libstd-rust-web-dev:armhf; })
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
  # The wrapper's own variables must stay literal.
  # shellcheck disable=SC2016
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s/root/usr/bin/rustc" "$@"\n' "$dir" "$dir" > "$dir/bin/rustc"
  chmod +x "$dir/bin/rustc"
}

build() {
  local target=$1; shift
  RUSTC="$dir/bin/rustc" CARGO_TARGET_DIR="$root/target/arm" \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
    cargo build --profile device --target "$target" -p scission-device "$@"
}

# qemu and the target's C library, for running a binary of `target` (a Cortex-A15 for armv7).
emulator() {
  case $1 in
    aarch64-*) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
    *) echo "env QEMU_CPU=cortex-a15 qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
  esac
}

# Step 3: the lean binary `lean` runs x86-written artifacts of every export under qemu.
check_artifacts() {
  local target=$1 lean=$2 host="$root/target/debug" check="$root/cross/exports-check.py" work qemu failed=0
  read -r -a qemu <<< "$(emulator "$target")"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  local bytes
  bytes=$(stat -c %s "$lean")
  echo "== $target: the lean device binary, $((bytes / 1000)) kB stripped ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB; the goal is 8 MiB or less), runs artifacts of real exports"
  for name in $(python3 "$check" names); do
    local onnx="$root/tests/fixtures/exports/$name.onnx" report cut nodes
    report=$("$host/scission-cloud" inspect "$onnx")
    cut=$(python3 "$check" middle-cut <<< "$report")
    nodes=$(sed -n 's/.*: \([0-9]*\) compute nodes.*/\1/p' <<< "$report")
    "$host/scission-cloud" slice "$onnx" --range "0,$cut" --range "$cut,$nodes" --range "0,$nodes" --out "$work/$name" >/dev/null
    python3 "$check" input "$name" "$work/$name/in.npy"
    "${qemu[@]}" "$lean" run-slice "$work/$name/0-$nodes.slice" --inputs "$work/$name/in.npy" --save "$work/$name/whole" --runs 1 >/dev/null
    printf '%s' "whole on $target: "
    python3 "$check" compare "$name" "$work/$name/whole/output-0.npy" || failed=1
    "${qemu[@]}" "$lean" run-slice "$work/$name/0-$cut.slice" --inputs "$work/$name/in.npy" --save "$work/$name/mid" --runs 1 >/dev/null
    "$host/scission-cloud" run-slice "$work/$name/$cut-$nodes.slice" --inputs "$work/$name/mid/output-0.npy" --save "$work/$name/split" --runs 1 >/dev/null
    printf '%s' "[0,$cut) on $target, the rest on x86: "
    python3 "$check" compare "$name" "$work/$name/split/output-0.npy" || failed=1
  done
  return $failed
}

check() {
  local target=$1 qemu
  read -r -a qemu <<< "$(emulator "$target")"
  local device="$root/target/arm/$target/device/scission-device" work
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' RETURN
  (cd "$root" && cargo build -q -p scission-cloud -p scission-edge)
  local host="$root/target/debug"
  "$host/scission-cloud" zoo write mobilenet_v2 --out "$work/m.onnx" >/dev/null
  echo "== $target: bench under qemu"
  "${qemu[@]}" "$device" bench "$work/m.onnx" --out "$work/arm.json" --name arm --quiet --min-runs 2 --max-runs 2 --max-time-ms 1
  "$host/scission-cloud" init --cluster "$work/cluster" >/dev/null
  for n in device edge cloud; do "$host/scission-cloud" enroll $n --tier $n --cluster "$work/cluster" >/dev/null; done
  "$host/scission-cloud" serve "$work/m.onnx" --cluster "$work/cluster" > "$work/cloud.log" &
  sleep 3
  local cloud edge
  cloud=$(grep -o 'on [0-9.:]*' "$work/cloud.log" | cut -d' ' -f2)
  "$host/scission-edge" serve "$work/m.onnx" --cluster "$work/cluster" --cloud "$cloud" > "$work/edge.log" &
  sleep 3
  edge=$(grep -o 'on [0-9.:]*' "$work/edge.log" | cut -d' ' -f2)
  # One input for every split, and x86's unsplit result on it: each split's output must match.
  local nodes failed=0
  nodes=$("$host/scission-cloud" inspect "$work/m.onnx" | sed -n 's/.*: \([0-9]*\) compute nodes.*/\1/p')
  python3 "$root/cross/exports-check.py" noise "$work/in.npy" 1 3 224 224
  "$host/scission-cloud" run-slice --model "$work/m.onnx" --range "0,$nodes" --inputs "$work/in.npy" --save "$work/x86" --runs 1 >/dev/null
  echo "== $target: emulated-ARM device, x86 edge and cloud, each split against x86's unsplit result"
  for split in 0,0 60,120 120,120 "$nodes,$nodes"; do
    "${qemu[@]}" "$device" run "$work/m.onnx" --cluster "$work/cluster" --edge "$edge" --cloud "$cloud" --split "$split" \
      --inputs "$work/in.npy" --no-check --save "$work/split-${split/,/-}" --timeout-ms 60000 | tail -1
    printf '%s' "split $split: "
    python3 "$root/cross/exports-check.py" compare-npy "$work/split-${split/,/-}/output-0.npy" "$work/x86/output-0.npy" || failed=1
  done
  return $failed
}

toolchain
case $which_targets in
  setup) "$dir/bin/rustc" -V; exit 0 ;;
  aarch64) targets=(aarch64-unknown-linux-gnu) ;;
  armv7) targets=(armv7-unknown-linux-gnueabihf) ;;
  all) targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf) ;;
  *) echo "usage: $0 [aarch64|armv7|all|setup]" >&2; exit 2 ;;
esac
for t in "${targets[@]}"; do
  build "$t"
  check "$t"
  "$root/cross/package-device.sh" "$t" "$root/target/arm/$t/device/scission-device"
  # The lean build next to the full one (the package keeps the full binary).
  cp "$root/target/arm/$t/device/scission-device" "$root/target/arm/$t/device/scission-device.full"
  build "$t" --no-default-features
  mv "$root/target/arm/$t/device/scission-device" "$root/target/arm/$t/device/scission-device.lean"
  mv "$root/target/arm/$t/device/scission-device.full" "$root/target/arm/$t/device/scission-device"
  check_artifacts "$t" "$root/target/arm/$t/device/scission-device.lean"
done
