"""Regenerate (or check) the checked-in Python stubs from the ``.proto`` sources.

    python -m protos.generate          # rewrite the stubs
    python -m protos.generate --check  # exit 1 when the checked-in stubs differ from a fresh generation
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = sorted(p.relative_to(ROOT) for p in (ROOT / "protos").rglob("*.proto"))
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> list[Path]:
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - dev dependency
        raise SystemExit("grpcio-tools is missing: pip install 'autosculpt[dev]'") from exc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [p.relative_to(out_dir) for p in sorted(out_dir.rglob("*")) if p.name.endswith(SUFFIXES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        stale = [rel for rel in fresh if not (ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)]
        if args.check:
            if stale:
                print("stale gRPC stubs (run `make protos`): " + ", ".join(map(str, stale)), file=sys.stderr)
                return 1
            print(f"gRPC stubs are up to date ({len(fresh)} files)")
            return 0
        for rel in fresh:
            shutil.copyfile(Path(tmp) / rel, ROOT / rel)
        print(f"generated {len(fresh)} files" + (f", {len(stale)} changed" if stale else ", none changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
