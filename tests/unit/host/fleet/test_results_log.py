"""results.jsonl of a fleet run: a damaged line (torn or with a non-UTF-8 byte) is skipped, not fatal."""

from __future__ import annotations

import json

from host.fleet.runner import JobRecord, ResultLog


def test_a_line_with_a_damaged_byte_is_skipped_and_the_others_read(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    first = JobRecord(device="a", address="pi@h", artifact="m.pte", artifact_sha256="ab" * 32, status="ok", p50_ms=1.0)
    log.append(first)
    line = json.dumps(JobRecord(device="b", address="pi@k", artifact="m.pte", artifact_sha256="cd" * 32,
                                status="ok").to_json())
    with log.path.open("ab") as fh:  # a disk or copy error flipped a byte: the line is no longer UTF-8
        fh.write(line.encode().replace(b'"b"', b'"\xff"') + b"\n")
    log.append(JobRecord(device="c", address="pi@l", artifact="m.pte", artifact_sha256="ef" * 32, status="error"))
    assert [r.device for r in log.read()] == ["a", "c"]
