"""The deploy files stay in sync with the code: the example config loads, the unit runs a real subcommand."""

import configparser

from device_agent.cli import build_parser
from device_agent.config import AgentConfig, load_config


def test_example_config_loads_with_safe_defaults(repo_root):
    config = load_config(repo_root / "deploy" / "agent.example.toml")
    assert config.host == "127.0.0.1" and config.is_loopback and config.tls is None and config.token is None
    assert config.energy.meter == "auto"
    config.validate()
    # The limits it documents are the code's defaults.
    defaults = AgentConfig(store_dir=config.store_dir)
    for key in ("max_timeout_s", "max_cooldown_s", "max_request_bytes", "results_kept_bytes", "results_kept",
                "default_timeout_s", "queue_capacity", "max_artifact_bytes", "store_capacity_bytes"):
        assert getattr(config, key) == getattr(defaults, key), key


def test_systemd_unit_runs_serve_with_the_config(repo_root):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(repo_root / "deploy" / "sculpt-agent.service")
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[0].endswith("/sculpt-agent") and exec_start[1] == "serve"
    args = build_parser().parse_args(exec_start[1:])
    assert args.command == "serve" and str(args.config) == "/etc/sculpt-agent/agent.toml"
    assert unit["Service"]["User"] != "root" and unit["Install"]["WantedBy"] == "multi-user.target"
