"""Entry point of ``sculpt-agent``: ``serve``, ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from device_agent import __version__
from device_agent.bench import Policy
from device_agent.config import AgentConfig, TlsConfig, load_config, read_token_file
from device_agent.errors import AgentConfigError, AgentError


def _common(parser: argparse.ArgumentParser,
            store_help: str = "artifact store directory (default ~/.cache/sculpt-agent/store)") -> None:
    parser.add_argument("--config", type=Path, help="agent config file (TOML); see deploy/agent.example.toml")
    parser.add_argument("--store", type=Path, help=store_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sculpt-agent",
        description="AutoSculpt device agent: benchmarks .pte / .tflite artifacts on this board over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC daemon",
                           description="Run the agent. Loopback only by default; any other address needs "
                                       "--tls-cert/--tls-key and --token-file.")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 50051; 0 = pick a free one and print it)")
    serve.add_argument("--token-file", type=Path, help="file whose first line is the bearer token clients send")
    serve.add_argument("--tls-cert", type=Path, help="PEM server certificate (needed off loopback)")
    serve.add_argument("--tls-key", type=Path, help="PEM server private key")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA for client certificates (enables mTLS)")
    serve.add_argument("--preload", default=None, metavar="RUNTIMES",
                       help="comma-separated runtimes whose workers start at launch (executorch,litert)")
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="stop when the parent process dies (stdin must be a pipe the parent keeps open); "
                            "used by `--device local`")
    serve.add_argument("--ephemeral-store", action="store_true",
                       help="the --store folder must be new or empty, and is deleted when the agent stops")
    _common(serve)
    serve.set_defaults(func=_serve)

    info = sub.add_parser("info", help="print this device's fingerprint (CPU, runtimes, meters)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    _common(info)
    info.set_defaults(func=_info)

    bench = sub.add_parser("bench", help="benchmark one artifact locally, no network (for debugging)")
    bench.add_argument("model", type=Path, help="a .pte or .tflite file")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--runtime", default="", help="executorch | litert (default: by file kind)")
    bench.add_argument("--threads", type=int, default=0, help="runtime threads (0 = runtime default)")
    bench.add_argument("--warmup", type=int, default=Policy.warmup_runs,
                       help=f"warm-up runs (default {Policy.warmup_runs})")
    bench.add_argument("--warmup-seconds", type=float, default=Policy.warmup_seconds,
                       help=f"minimum warm-up time (default {Policy.warmup_seconds:g})")
    bench.add_argument("--runs", type=int, default=Policy.min_runs, help=f"minimum timed runs (default {Policy.min_runs})")
    bench.add_argument("--seconds", type=float, default=Policy.min_seconds,
                       help=f"minimum timed seconds (default {Policy.min_seconds:g})")
    bench.add_argument("--max-runs", type=int, default=Policy.max_runs,
                       help=f"cap on timed runs (default {Policy.max_runs})")
    bench.add_argument("--max-seconds", type=float, default=Policy.max_seconds,
                       help=f"cap on timed seconds (default {Policy.max_seconds:g}; 0 = none)")
    bench.add_argument("--timeout", type=float, default=0.0, help="worker deadline in s (0 = agent default)")
    bench.add_argument("--energy", action="store_true", help="also measure energy, when a meter exists")
    _common(bench, store_help="artifact store directory (default: a temporary one, removed afterwards)")
    bench.set_defaults(func=_bench)
    return parser


def _config(args, **overrides) -> AgentConfig:
    return load_config(args.config, store_dir=args.store, **overrides)


def _serve(args) -> int:
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise AgentConfigError("--tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise AgentConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    token = read_token_file(args.token_file) if args.token_file else None
    preload = tuple(r.strip() for r in args.preload.split(",") if r.strip()) if args.preload else None
    config = _config(args, host=args.host, port=args.port, token=token, tls=tls, preload_runtimes=preload,
                     ephemeral_store=args.ephemeral_store or None)
    if config.ephemeral_store and args.store is None:
        raise AgentConfigError("--ephemeral-store deletes the store when the agent stops: pass --store with a "
                               "new or empty folder")
    from device_agent.server import serve

    serve(config, exit_with_parent=args.exit_with_parent)
    return 0


def message_json(message) -> dict:
    """A protobuf message as JSON-able dict with the proto field names, every field present, and 64-bit
    integers as numbers (protobuf's JSON mapping writes them as strings, which no consumer expects here)."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.json_format import MessageToDict

    wide = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}

    def fix(descriptor, doc: dict) -> dict:
        for field in descriptor.fields:
            if field.name not in doc:
                continue
            value = doc[field.name]
            if field.type in wide:
                doc[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry is False:
                items = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, dict):
                        fix(field.message_type, item)
        return doc

    doc = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return fix(message.DESCRIPTOR, doc)


def _info(args) -> int:
    from device_agent.agent import Agent

    agent = Agent(_config(args))
    info = agent.info()
    if args.json:
        print(json.dumps(message_json(info), indent=2, sort_keys=True))
        return 0
    temps = ", ".join(f"{t.zone} {t.celsius:.1f} C" for t in info.temperatures) or "none exposed"
    freqs = (f"{info.cpu_freq_min_mhz:.0f}-{info.cpu_freq_max_mhz:.0f} MHz" if info.cpu_freq_max_mhz
             else "not exposed")
    lines = [
        f"agent        {info.agent_version} (protocol v{info.protocol_version}), fingerprint {info.fingerprint}",
        f"host         {info.hostname}: {info.machine}, {info.os}",
        f"board        {info.board or 'unknown'}",
        f"cpu          {info.cpu_model} x {info.cpu_count}, governor {info.governor or 'n/a'}, {freqs}",
        f"memory       {info.memory_available_bytes / 2**30:.1f} of {info.memory_total_bytes / 2**30:.1f} GiB free",
        f"temperatures {temps}",
        f"energy       {', '.join(info.energy_meters) or 'unavailable: ' + info.energy_unavailable_reason}",
    ]
    for rt in info.runtimes:
        state = rt.version if rt.available else f"unavailable ({rt.unavailable_reason})"
        lines.append(f"runtime      {rt.name}: {state}")
    print("\n".join(lines))
    return 0


def _bench(args) -> int:
    from device_agent.agent import Agent
    from protos.agent.v1 import agent_pb2 as pb

    try:
        data = args.model.read_bytes()
    except OSError as exc:
        raise AgentConfigError(f"cannot read {args.model}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="sculpt-agent-bench-") as tmp:
        config = _config(args)
        if args.store is None:
            config = load_config(args.config, store_dir=Path(tmp))
        agent = Agent(config)
        try:
            sha = agent.store_file(data)
            policy = pb.BenchPolicy(warmup_runs=args.warmup, warmup_seconds=args.warmup_seconds,
                                    min_runs=args.runs, min_seconds=args.seconds, max_runs=args.max_runs,
                                    max_seconds=args.max_seconds)
            result = agent.benchmark(pb.BenchmarkRequest(
                artifact_sha256=sha, runtime=args.runtime, threads=args.threads, policy=policy,
                timeout_seconds=args.timeout, measure_energy=args.energy))
        finally:
            agent.close()
    if args.json:
        print(json.dumps(message_json(result), indent=2, sort_keys=True))
        return 0
    s = result.stats
    e = result.energy
    energy = (f"{e.joules_per_inference * 1000:.3f} mJ/inference ({e.meter}, idle-subtracted "
              f"{e.joules_per_inference_idle_subtracted * 1000:.3f} mJ)" if e.available
              else f"unavailable ({e.unavailable_reason})")
    print("\n".join([
        f"model        {args.model.name} (sha256 {sha[:16]}...), {result.runtime} {result.runtime_version}, "
        f"{result.threads} thread(s)",
        f"latency      p50 {s.p50_ms:.3f} ms, p90 {s.p90_ms:.3f} ms, mean {s.mean_ms:.3f} +- {s.std_ms:.3f} ms "
        f"(CV {s.cv * 100:.1f}%), {s.count} runs in {result.timed_window_s:.2f} s",
        f"load         {result.load_ms:.1f} ms, first run {result.first_run_ms:.2f} ms, {result.warmup_runs} warm-up runs",
        f"memory       peak RSS {result.peak_rss_bytes / 2**20:.1f} MiB",
        f"throttled    {'yes: ' + result.throttle_reason if result.throttled else 'no'} "
        f"(load average {result.load_average_1m:.2f})",
        f"energy       {energy}",
        f"outputs      {', '.join(d[:16] for d in result.output_sha256)}",
    ]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else
                        (logging.INFO if args.command == "serve" else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except AgentConfigError as exc:
        print(f"sculpt-agent: error: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"sculpt-agent: {exc.code}: {exc.message}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"sculpt-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
