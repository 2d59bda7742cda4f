"""Run the corpus test's steps for every entry outside pytest and write one status line per architecture.

    .venv/bin/python -m tests.integration.corpus.diagnose [--out /tmp/corpus_status.md] [--no-export] [NAME ...]

Each line says which step fails first (graph, space, plans, export) and the exact error (first line), so the
owners of the causes can pick theirs; the file is rewritten after every entry.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from tests.fixtures import corpus
from tests.integration.corpus import test_corpus as tc


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def diagnose(name: str, export: bool, tmp: Path) -> tuple[str, str, float]:
    start = time.perf_counter()
    step = "build"
    try:
        corpus.model(name)
        step = "graph"
        tc.test_graph_and_inspect(name)
        step = "plans"
        tc.test_floor_and_random_plans_realize_exactly(name)
        if export:
            step = "export"
            tc.test_realized_floor_exports_to_pte_matching_eager(name, tmp)
    except BaseException as exc:  # noqa: BLE001 - the report says what failed, whatever it is
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return step, f"{_first_line(exc)}  [at {Path(where.filename).name}:{where.lineno}]", \
            time.perf_counter() - start
    return "ok", "", time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("/tmp/corpus_status.md"))
    parser.add_argument("--no-export", dest="export", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = ["# corpus status (tests/integration/corpus), first failing step per architecture", ""]
    with TemporaryDirectory() as tmp:
        for name in args.names or corpus.NAMES:
            step, error, seconds = diagnose(name, args.export, Path(tmp))
            status = "PASS" if step == "ok" else f"FAIL at {step}"
            lines.append(f"- {name} ({corpus.entry(name).spec}): {status} ({seconds:.0f}s) {error}".rstrip())
            args.out.write_text("\n".join(lines) + "\n")
            print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
