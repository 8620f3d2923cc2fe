#!/usr/bin/env python3
"""Checks the deployment files against the code, beyond their schema (kubernetes-validate):

- every command a manifest runs names a subcommand and flags the built binary accepts
  (`BIN SUB --help`), so a renamed flag breaks CI, not a rollout;
- every Service selects the pods of some workload, on a port those pods declare;
- with --image FILE: the OCI archive's blobs match their digests and sizes, and (as root) the
  image's binaries start from its layer alone (chroot).

Usage: check.py [--bin-dir target/debug] [--image target/images/scission-server.oci.tar]
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFESTS = ["namespace.yaml", "config.yaml", "planner.yaml", "cloud-stages.yaml", "edge.yaml"]


def documents():
    for name in MANIFESTS:
        with open(os.path.join(HERE, "k8s", name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield name, doc


def pod_specs(doc):
    spec = doc.get("spec", {}).get("template", {})
    return [spec] if spec else []


def check_commands(bin_dir, docs, problems):
    helps = {}
    for name, doc in docs:
        for template in pod_specs(doc):
            spec = template["spec"]
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                command = c["command"]
                binary, sub = os.path.basename(command[0]), command[1]
                key = (binary, sub)
                if key not in helps:
                    run = subprocess.run([os.path.join(bin_dir, binary), sub, "--help"], capture_output=True, text=True)
                    if run.returncode != 0:
                        problems.append(f"{name}: `{binary} {sub}` is not a command: {run.stderr.strip()}")
                        continue
                    helps[key] = set(re.findall(r"--[a-z][a-z0-9-]*", run.stdout))
                for flag in (a for a in command[2:] if a.startswith("--")):
                    if flag not in helps[key]:
                        problems.append(f"{name}: `{binary} {sub}` has no flag {flag}")


def check_services(docs, problems):
    pods = []
    for _, doc in docs:
        for template in pod_specs(doc):
            ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((template["metadata"]["labels"], ports))
    for name, doc in docs:
        if doc["kind"] != "Service":
            continue
        selector = doc["spec"]["selector"]
        matching = [ports for labels, ports in pods if all(labels.get(k) == v for k, v in selector.items())]
        if not matching:
            problems.append(f"{name}: Service {doc['metadata']['name']} selects no pods")
        for port in doc["spec"]["ports"]:
            if any(port["targetPort"] not in ports for ports in matching):
                problems.append(f"{name}: Service {doc['metadata']['name']} targets port {port['targetPort']} its pods lack")


def check_image(path, problems):
    with tarfile.open(path) as archive:
        files = {m.name.lstrip("./"): archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}

    def blob(descriptor):
        algorithm, digest = descriptor["digest"].split(":")
        data = files.get(f"blobs/sha256/{digest}")
        if algorithm != "sha256" or data is None:
            problems.append(f"{path}: blob {descriptor['digest']} is missing")
            return b""
        if hashlib.sha256(data).hexdigest() != digest or len(data) != descriptor["size"]:
            problems.append(f"{path}: blob {digest} does not match its digest or size")
        return data

    if json.loads(files.get("oci-layout", b"{}")).get("imageLayoutVersion") != "1.0.0":
        problems.append(f"{path}: no oci-layout")
    for entry in json.loads(files["index.json"])["manifests"]:
        manifest = json.loads(blob(entry) or b"{}")
        if manifest.get("mediaType") != "application/vnd.oci.image.manifest.v1+json":
            problems.append(f"{path}: the manifest's media type is {manifest.get('mediaType')}")
            continue
        config = json.loads(blob(manifest["config"]) or b"{}")
        layers = [blob(layer) for layer in manifest["layers"]]
        import gzip

        diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() for layer in layers]
        if diff_ids != config.get("rootfs", {}).get("diff_ids"):
            problems.append(f"{path}: the config's diff_ids do not match the layers")
        if os.geteuid() == 0:
            with tempfile.TemporaryDirectory() as rootfs:
                for layer in layers:
                    tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz").extractall(rootfs, filter="tar")
                for binary in ("scission-cloud", "scission-edge"):
                    user = config["config"]["User"]
                    run = subprocess.run(["chroot", f"--userspec={user}", rootfs, f"/usr/local/bin/{binary}", "--version"], capture_output=True, text=True)
                    if run.returncode != 0:
                        problems.append(f"{path}: {binary} does not start from the image alone: {run.stderr.strip()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", default=os.path.join(HERE, "..", "..", "target", "debug"))
    parser.add_argument("--image")
    args = parser.parse_args()
    docs = list(documents())
    problems = []
    check_commands(args.bin_dir, docs, problems)
    check_services(docs, problems)
    if args.image:
        check_image(args.image, problems)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(docs)} resources checked" + (f", and {args.image}" if args.image else "") + (": ok" if not problems else f": {len(problems)} problems"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
