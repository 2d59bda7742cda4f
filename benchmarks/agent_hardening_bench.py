"""Before/after figures for the agent hardening (issue 12): what hostile input, cancelled work and dying
processes cost a real ``sculpt-agent serve`` on loopback.

- daemon RSS growth after a string flood (40 benchmarks whose job ids are 4 MiB each);
- how long a cancelled running benchmark keeps the device;
- the cool-down worst case on a board that stays hot (fake thermal zone at 90 C): answer time without a
  cancel, board hold after a cancel, time for SIGTERM to end the daemon;
- what a SIGKILLed host process leaves behind (its private local agent, the agent's worker, its temp folder).

Every wait is bounded; a figure that hit its bound is printed as ">N s". Only 127.0.0.1 is used, and only
processes this script started are signalled. Run it on any checkout (the agent code comes from PYTHONPATH):

    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/agent_hardening_bench.py    # original code
    PYTHONPATH=. .venv/bin/python benchmarks/agent_hardening_bench.py              # this checkout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil

from protos.agent.v1 import agent_pb2 as pb
from protos.agent.v1 import agent_pb2_grpc

MIB = 2**20
# Child processes start in the tree whose agent code this script imported: ``python -m`` and ``-c`` put the
# working directory ahead of PYTHONPATH, so starting them elsewhere could run another checkout's code.
CODE_ROOT = Path(__import__("device_agent").__file__).resolve().parent.parent
ONE_RUN = pb.BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0, max_runs=1, max_seconds=0)
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class Agent:
    """A ``python -m device_agent.cli serve --port 0`` subprocess with its own store (and optional config)."""

    def __init__(self, work: Path, config: str = "") -> None:
        store = work / f"store-{time.monotonic_ns()}"
        cmd = [sys.executable, "-m", "device_agent.cli", "serve", "--port", "0", "--store", str(store)]
        if config:
            path = work / f"agent-{time.monotonic_ns()}.toml"
            path.write_text(config)
            cmd += ["--config", str(path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, cwd=CODE_ROOT)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                match = _LISTENING.search(lines.get(timeout=0.5))
                port = int(match.group(1)) if match else None
        if port is None:
            self.kill()
            raise RuntimeError("the agent did not start")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.max_send_message_length", 64 * MIB)])
        self.stub = agent_pb2_grpc.AgentStub(self.channel)

    def upload(self, data: bytes) -> str:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        chunks = [pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=len(data)))]
        chunks += [pb.ArtifactChunk(data=data[i:i + MIB]) for i in range(0, len(data), MIB)]
        self.stub.UploadArtifact(iter(chunks), timeout=30)
        return sha

    def depth(self) -> int:
        return self.stub.GetInfo(pb.GetInfoRequest(), timeout=10).queue_depth

    def wait_depth(self, value: int, bound: float) -> float | None:
        """Seconds until the queue depth is ``value``; None when it was not within ``bound``."""
        start = time.monotonic()
        while time.monotonic() - start < bound:
            if self.depth() == value:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def sigterm_exit_s(self, bound: float) -> float | None:
        """Seconds from SIGTERM to exit; None when it had not exited within ``bound`` (then it is killed)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=bound)
            return time.monotonic() - start
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        for child in _children(self.proc.pid):
            with contextlib.suppress(psutil.Error):
                child.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@contextlib.contextmanager
def agent(work: Path, config: str = "") -> Iterator[Agent]:
    a = Agent(work, config)
    try:
        yield a
    finally:
        a.kill()


def fmt(seconds: float | None, bound: float) -> str:
    return f">{bound:g} s (still held)" if seconds is None else f"{seconds:.2f} s"


def code_of(fn) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def string_flood(work: Path, model: bytes, jobs: int) -> list[tuple[str, str]]:
    with agent(work) as a:
        sha = a.upload(model)
        a.stub.Benchmark(pb.BenchmarkRequest(artifact_sha256=sha, policy=ONE_RUN), timeout=60)

        def flood(n: int, tag: str) -> list[str]:
            return [code_of(lambda i=i: a.stub.Benchmark(pb.BenchmarkRequest(
                artifact_sha256=sha, policy=ONE_RUN, job_id=f"{tag}{i}-" + "j" * 4 * MIB), timeout=60))
                for i in range(n)]

        flood(5, "warm")
        before = a.rss()
        codes = flood(jobs, "flood")
        grown = a.rss() - before
    return [(f"daemon RSS growth after {jobs} benchmarks with 4 MiB job ids", f"{grown / MIB:+.0f} MiB "
             f"(answers: {', '.join(sorted(set(codes)))})")]


def cancelled_hold(work: Path, model: bytes, bound: float) -> list[tuple[str, str]]:
    rows = []
    cases = [("min_seconds=1e6, timeout 20 s, cancelled after 1 s", 1e6, 20.0),
             ("min_seconds=15, timeout 20 s, cancelled after 1 s", 15.0, 20.0)]
    for label, min_seconds, timeout in cases:
        with agent(work) as a:
            sha = a.upload(model)
            a.stub.Benchmark(pb.BenchmarkRequest(artifact_sha256=sha, policy=ONE_RUN), timeout=60)
            policy = pb.BenchPolicy(warmup_runs=0, min_runs=1, min_seconds=min_seconds, max_runs=10_000_000,
                                    max_seconds=0)
            call = a.stub.Benchmark.future(pb.BenchmarkRequest(artifact_sha256=sha, policy=policy,
                                                               timeout_seconds=timeout), timeout=60)
            if a.wait_depth(1, 5) is None:
                with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
                    call.result(timeout=5)
                rows.append((f"board held by a job with {label}", f"0 s: refused ({call.code().name})"))
                continue
            time.sleep(1.0)
            call.cancel()
            rows.append((f"board held after cancelling a job with {label}", fmt(a.wait_depth(0, bound), bound)))
    return rows


def cooldown(work: Path, model: bytes, bound: float) -> list[tuple[str, str]]:
    root = work / "hot-sysfs"
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("90000\n")  # stays hot for the whole measurement
    config = f'sysfs_root = "{root}"\n[energy]\nmeter = "none"\n'
    rows = []
    for wait in (1e6, 300.0):
        gate = pb.BenchPolicy(warmup_runs=0, min_runs=1, min_seconds=0, max_runs=1, max_temperature_c=70,
                              cooldown_timeout_seconds=wait)
        request = pb.BenchmarkRequest(artifact_sha256="", policy=gate, timeout_seconds=5)
        with agent(work, config) as a:  # no cancel: when does the caller get an answer?
            request.artifact_sha256 = a.upload(model)
            start = time.monotonic()
            code = code_of(lambda r=request: a.stub.Benchmark(r, timeout=bound))
            took = time.monotonic() - start
            answer = f">{bound:g} s (gRPC deadline)" if code == "DEADLINE_EXCEEDED" and took >= bound - 0.1 \
                else f"{took:.2f} s ({code})"
            rows.append((f"hot board, cooldown_timeout {wait:g} s, timeout 5 s: answer after", answer))
            held = a.wait_depth(0, 2) if code != "OK" else 0.0
            rows.append(("  ... and the board is free again after the answer",
                         "at once" if held is not None else "no: still waiting"))
        with agent(work, config) as a:  # the caller leaves after 1 s
            request.artifact_sha256 = a.upload(model)
            call = a.stub.Benchmark.future(request, timeout=60)
            if a.wait_depth(1, 5) is None:
                rows.append(("  ... board held after the caller left at 1 s", "0 s: refused at once"))
                continue
            time.sleep(1.0)
            call.cancel()
            rows.append(("  ... board held after the caller left at 1 s", fmt(a.wait_depth(0, bound), bound)))
        with agent(work, config) as a:  # SIGTERM while it waits
            request.artifact_sha256 = a.upload(model)
            call = a.stub.Benchmark.future(request, timeout=60)
            if a.wait_depth(1, 5) is not None:
                time.sleep(0.5)
                exit_s = a.sigterm_exit_s(bound)
                rows.append(("  ... SIGTERM during the wait: daemon exits after",
                             f">{bound:g} s (still running)" if exit_s is None else f"{exit_s:.2f} s"))
            with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
                call.cancel()
    return rows


HOST_SCRIPT = r"""
import json, sys, time
import psutil
from host.devices.local import LocalAgent
agent = LocalAgent(preload=("litert",)).start()
proc = psutil.Process(agent.pid)
deadline = time.monotonic() + 60
while not proc.children() and time.monotonic() < deadline:
    time.sleep(0.1)
tmp = getattr(agent, "temp_dir", None) or getattr(agent, "_tmp", None)
print(json.dumps({"agent": agent.pid, "workers": [c.pid for c in proc.children()], "tmp": str(tmp)}), flush=True)
time.sleep(600)
"""


def killed_host(bound: float) -> list[tuple[str, str]]:
    rows = []
    for sig in (signal.SIGKILL, signal.SIGTERM):
        host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdout=subprocess.PIPE, text=True,
                                cwd=CODE_ROOT)
        facts = json.loads(host.stdout.readline())
        pids = [facts["agent"], *facts["workers"]]
        tmp = Path(facts["tmp"])
        host.send_signal(sig)
        host.wait(timeout=10)
        start = time.monotonic()
        alive = pids
        while time.monotonic() - start < bound:
            alive = [p for p in pids if _running(p)]
            if not alive and not tmp.exists():
                break
            time.sleep(0.1)
        gone_s = time.monotonic() - start
        left = f"{len(alive)} of {len(pids)} processes alive, temp folder {'left' if tmp.exists() else 'gone'}"
        rows.append((f"{sig.name} of the host process: after {min(gone_s, bound):.1f} s", left))
        for pid in alive:  # clean up after the original code: these are the processes we started
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        if tmp.name.startswith("sculpt-local-agent-") and tmp.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bound", type=float, default=20.0, help="longest wait per figure, seconds")
    parser.add_argument("--jobs", type=int, default=40, help="benchmarks with 4 MiB job ids")
    args = parser.parse_args()
    from tests.fixtures.tflite_builder import conv_net

    model = conv_net(size=40, channels=(3, 32, 64))[0]
    print(f"agent code: {CODE_ROOT}")
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="agent-hardening-bench-") as tmp:
        work = Path(tmp)
        rows += string_flood(work, model, args.jobs)
        rows += cancelled_hold(work, model, args.bound)
        rows += cooldown(work, model, args.bound)
    rows += killed_host(args.bound)
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for label, value in rows:
        print(f"| {label.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
