#!/usr/bin/env python3
"""Helpers for cross/check-arm.sh's check of slice artifacts across architectures, on the real
torch.onnx and tf2onnx exports in tests/fixtures/exports (standard library only: no NumPy).

  exports-check.py names                  the exports, one per line
  exports-check.py input NAME OUT.npy     the export's fixed input as an .npy file
  exports-check.py middle-cut             the middle cut position, from `scission-cloud inspect` on stdin
  exports-check.py compare NAME OUT.npy   compares an output with onnxruntime's (x86) output;
                                          exits 1 beyond the tolerance
  exports-check.py noise OUT.npy D0 D1 ...  a deterministic float32 input in [-1, 1) of that shape
  exports-check.py compare-npy GOT.npy WANT.npy  compares two float32 outputs, as `compare`
"""
import array
import json
import pathlib
import sys

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "exports"
# Relative to the output's largest magnitude: kernels differ across x86 and ARM (summation order,
# fused multiply-add), so results are close, not bit-exact.
TOLERANCE = 1e-4


def model(name):
    for m in json.loads((FIXTURES / "exports.json").read_text())["models"]:
        if m["name"] == name:
            return m
    sys.exit(f"no export named {name}")


def floats(data):
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def write_npy(path, shape, data):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % dims
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    pathlib.Path(path).write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data)


def read_npy(path):
    raw = pathlib.Path(path).read_bytes()
    if raw[:6] != b"\x93NUMPY" or raw[6] != 1:
        sys.exit(f"{path}: not a version 1 .npy file")
    length = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + length].decode()
    if "'<f4'" not in header:
        sys.exit(f"{path}: not float32 ({header.strip()})")
    return floats(raw[10 + length:])


def compare(got, want, prefix, what):
    """Prints the largest difference of `got` from `want`; 0 within the tolerance, else 1."""
    if len(got) != len(want):
        sys.exit(f"{prefix}{len(got)} values, {what} gave {len(want)}")
    scale = max(1.0, max(abs(v) for v in want))
    worst = max(abs(a - b) for a, b in zip(got, want))
    verdict = "ok" if worst <= TOLERANCE * scale else "TOO FAR"
    print(f"{prefix}largest difference from {what} {worst:.2e} (tolerance {TOLERANCE * scale:.2e}) {verdict}")
    return 0 if verdict == "ok" else 1


def main(argv):
    if argv[:1] == ["names"]:
        for m in json.loads((FIXTURES / "exports.json").read_text())["models"]:
            print(m["name"])
    elif argv[:1] == ["input"] and len(argv) == 3:
        m = model(argv[1])
        write_npy(argv[2], m["input"]["shape"], (FIXTURES / m["input"]["file"]).read_bytes())
    elif argv[:1] == ["middle-cut"]:
        cuts = [int(line.split()[1]) for line in sys.stdin if line.startswith("*")]
        inner = [c for c in cuts if c > 0]
        if not inner:
            sys.exit("no inner cut point in the inspect output")
        print(inner[len(inner) // 2])
    elif argv[:1] == ["compare"] and len(argv) == 3:
        m = model(argv[1])
        want = floats((FIXTURES / m["output"]["file"]).read_bytes())
        return compare(read_npy(argv[2]), want, f"{argv[1]}: ", "onnxruntime")
    elif argv[:1] == ["noise"] and len(argv) >= 3:
        shape = [int(d) for d in argv[2:]]
        count = 1
        for d in shape:
            count *= d
        state, values = 12345, array.array("f")
        for _ in range(count):
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            values.append((state >> 40) / float(1 << 23) - 1.0)
        if sys.byteorder != "little":
            values.byteswap()
        write_npy(argv[1], shape, values.tobytes())
    elif argv[:1] == ["compare-npy"] and len(argv) == 3:
        return compare(read_npy(argv[1]), read_npy(argv[2]), "", "the reference")
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
