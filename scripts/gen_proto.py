"""Regenerate the committed protobuf/gRPC code from proto/qkdnet/v1/*.proto.

Usage: python scripts/gen_proto.py          # rewrite the generated files
       python scripts/gen_proto.py --check  # fail (exit 1) when the committed files differ

The generated code is committed (as trio does) so that installing qkdnet needs no protoc; this
script is the one way to produce it, and the test suite runs it with --check.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = PROTO_ROOT / "qkdnet" / "v1"
# The mypy-protobuf plugins are installed next to the interpreter running this script.
BIN = Path(sys.executable).parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into `out`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp) / "qkdnet" / "v1")
        if args.check:
            names_fresh = {p.name for p in fresh}
            names_committed = {p.name for p in generated_files(PACKAGE)}
            differ = sorted(names_fresh ^ names_committed)
            differ += [
                p.name
                for p in fresh
                if p.name in names_committed and not filecmp.cmp(p, PACKAGE / p.name, shallow=False)
            ]
            if differ:
                print("generated protobuf code is out of date: " + ", ".join(differ))
                print("run: python scripts/gen_proto.py")
                return 1
            print(f"generated protobuf code is up to date ({len(fresh)} files)")
            return 0
        for stale in generated_files(PACKAGE):
            stale.unlink()
        for path in fresh:
            shutil.copy(path, PACKAGE / path.name)
        print(f"wrote {len(fresh)} files to {PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
