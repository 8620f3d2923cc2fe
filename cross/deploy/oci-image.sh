#!/usr/bin/env bash
# Makes the server image (scission-cloud and scission-edge) as an OCI image archive without a
# container engine or a base image: one layer with the two binaries, the shared libraries they
# load (as this host has them) and a passwd entry for the unprivileged user.
#   cargo build --release -p scission-cloud -p scission-edge
#   cross/deploy/oci-image.sh [BIN_DIR] [TAG]      # BIN_DIR defaults to target/release
# Load it with `skopeo copy oci-archive:target/images/scission-server.oci.tar docker://REGISTRY/scission-server:TAG`
# or `podman load -i ...`; cross/deploy/check.py --image FILE checks its digests.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bins=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
tag=${2:-0.1}
for b in scission-cloud scission-edge; do
  [ -x "$bins/$b" ] || { echo "no $bins/$b: build it first (cargo build --release -p $b)" >&2; exit 1; }
done
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=arm ;;
  *) echo "unknown architecture $(uname -m)" >&2; exit 1 ;;
esac
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rootfs=$stage/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/var/lib/scission/cache" "$rootfs/tmp" "$rootfs/etc"
cp "$bins/scission-cloud" "$bins/scission-edge" "$rootfs/usr/local/bin/"
# The shared libraries and the loader, at the paths the binaries look for them.
ldd "$bins/scission-cloud" "$bins/scission-edge" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u |
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
echo 'scission:x:10001:10001::/var/lib/scission:/sbin/nologin' > "$rootfs/etc/passwd"
echo 'scission:x:10001:' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
layout=$stage/layout
mkdir -p "$layout/blobs/sha256"
# A reproducible layer: sorted, owned by root, no timestamps; the user's directory is theirs.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$stage/layer.tar" .
diff_id=$(sha256sum "$stage/layer.tar" | cut -d' ' -f1)
gzip -n -9 "$stage/layer.tar"
blob() { # FILE -> moves it into the layout, prints "digest size"
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$digest"
  echo "$digest $size"
}
read -r layer_digest layer_size < <(blob "$stage/layer.tar.gz")
cat > "$stage/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"User":"10001:10001","WorkingDir":"/var/lib/scission","Env":["PATH=/usr/local/bin:/usr/bin:/bin","SCISSION_CACHE=/var/lib/scission/cache"],"Entrypoint":["/usr/local/bin/scission-cloud"],"Cmd":["--help"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
read -r config_digest config_size < <(blob "$stage/config.json")
cat > "$stage/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
JSON
read -r manifest_digest manifest_size < <(blob "$stage/manifest.json")
cat > "$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
out=${OUT_DIR:-$root/target/images}
mkdir -p "$out"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out/scission-server.oci.tar" .
echo "$out/scission-server.oci.tar (scission-server:$tag, $arch, layer $((layer_size / 1024 / 1024)) MiB)"
