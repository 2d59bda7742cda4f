"""SearchConfig: validated at construction, round-trips through the journal's JSON, CLI flags map onto it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.errors import ConfigError
from host.search.config import SearchConfig


def test_round_trip_through_json():
    config = SearchConfig(out=Path("runs/x"), budget=7, objective="energy", target="3mJ", devices=("local", "pi@b"))
    data = json.loads(json.dumps(config.to_dict()))
    assert SearchConfig.from_dict(data) == config


def test_bad_values_fail_at_once():
    with pytest.raises(ConfigError, match="budget"):
        SearchConfig(budget=0)
    with pytest.raises(ConfigError, match="objective is latency"):
        SearchConfig(objective="latency", target="3mJ")
    with pytest.raises(ConfigError, match="needs a device"):
        SearchConfig(devices=())
    SearchConfig(devices=(), objective="flops")  # flops needs no device
    with pytest.raises(ConfigError, match="another AutoSculpt version"):
        SearchConfig.from_dict({**SearchConfig().to_dict(), "surprise": 1})
    with pytest.raises(ConfigError, match="precision"):
        SearchConfig(precision="int4")


def test_int8_settings_round_trip_and_old_configs_read_as_fp32():
    from dataclasses import replace

    from host.search.config import EvalConfig

    config = SearchConfig(precision="int8", evaluation=EvalConfig(calibration_images=8))
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="calibration image"):
        replace(config, evaluation=EvalConfig(calibration_images=0))
    old = SearchConfig().to_dict()  # a journal written before --precision existed
    del old["precision"]
    del old["evaluation"]["calibration_images"]
    assert SearchConfig.from_dict(old).precision == "fp32"


def test_cli_flags_build_the_config():
    from host.cli.main import build_parser
    from host.cli.search_cmd import build_config

    args = build_parser().parse_args(
        ["search", "--model", "vgg16", "--device", "local", "--device", "grpc://10.0.0.5:50051", "--budget", "9",
         "--objective", "flops", "--target-flops", "0.6", "--bench-runs", "8", "--out", "runs/y",
         "--precision", "int8", "--calibration-images", "12"]
    )
    config = build_config(args)
    assert config.precision == "int8" and config.evaluation.calibration_images == 12
    assert config.model.model == "vgg16" and config.budget == 9 and config.target_flops == 0.6
    assert config.devices == ("local", "grpc://10.0.0.5:50051")
    assert config.evaluation.bench.min_runs == 8 and config.out == Path("runs/y")
    default = build_config(build_parser().parse_args(["search"]))
    assert default.model.model == "resnet20" and default.devices == ("local",) and default.target == "0.5x"


def test_the_cli_defaults_are_the_config_defaults():
    """`sculpt-host search` with no flags builds exactly SearchConfig()'s settings (one place for defaults)."""
    from dataclasses import replace

    from host.cli.main import build_parser
    from host.cli.search_cmd import DEFAULT_OUT, build_config
    from host.search.config import SearchConfig

    built = build_config(build_parser().parse_args(["search"]))
    assert built == replace(SearchConfig(), out=type(built.out)(DEFAULT_OUT))


def test_names_given_as_text_become_their_kinds_and_are_stored_as_text():
    """The CLI and a stored journal give names as strings: the config holds enum members (so code compares
    members, not literals), the journal's JSON holds the same strings as before, and a typo names the choices."""
    from host.kinds import Aggregate, ConstraintName, ObjectiveName, Precision, Strategy

    config = SearchConfig(objective="energy", constraint="soft", aggregate="weighted", strategy="random",
                          precision="int8")
    assert config.objective is ObjectiveName.ENERGY and config.constraint is ConstraintName.SOFT
    assert config.aggregate is Aggregate.WEIGHTED and config.strategy is Strategy.RANDOM
    assert config.precision is Precision.INT8 and config.reward_objective().name is ObjectiveName.ENERGY
    data = json.loads(json.dumps(config.to_dict()))
    assert (data["objective"], data["precision"], data["strategy"]) == ("energy", "int8", "random")
    assert SearchConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown search strategy 'annealing'") as caught:
        SearchConfig(strategy="annealing")
    assert "ppo, random, evolution" in caught.value.hint
    with pytest.raises(ConfigError, match="device aggregation"):
        SearchConfig(aggregate="mean")


def test_strategy_flag_selects_evolution_and_rejects_unknown_names(capsys):
    from host.cli.main import build_parser
    from host.cli.search_cmd import build_config
    from host.kinds import Strategy

    config = build_config(build_parser().parse_args(["search", "--strategy", "evolution", "--budget", "24"]))
    assert config.strategy is Strategy.EVOLUTION and config.budget == 24
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))).strategy is Strategy.EVOLUTION
    assert build_config(build_parser().parse_args(["search"])).strategy is Strategy.PPO
    with pytest.raises(SystemExit) as exited:  # argparse names the choices, as for every other enum flag
        build_parser().parse_args(["search", "--strategy", "annealing"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "invalid choice: 'annealing'" in err and "'evolution'" in err
    # a policy file only means something to PPO: said at once rather than silently ignored
    with pytest.raises(ConfigError, match="--strategy evolution has no policy") as caught:
        build_config(build_parser().parse_args(["search", "--strategy", "evolution", "--policy", "p.pt"]))
    assert "--strategy ppo" in caught.value.hint


def test_device_pools_parse_and_round_trip_through_the_journal_form():
    from host.search.config import SearchConfig
    from host.search.devices import PoolSpec

    config = SearchConfig(devices=(), device_pools=("pis=pi@10.0.0.5, pi@10.0.0.6",))
    assert config.pools() == [PoolSpec("pis", ("pi@10.0.0.5", "pi@10.0.0.6"))]
    again = SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    old = config.to_dict()
    del old["device_pools"]  # a journal written before pools existed
    old["devices"] = ["local"]
    assert SearchConfig.from_dict(old).device_pools == ()


@pytest.mark.parametrize("text,says", [("pis", "NAME=ADDRESS"), ("=a,b", "NAME=ADDRESS"), ("pis=", "NAME=ADDRESS"),
                                       ("pis=a,a", "listed twice")])
def test_bad_device_pools_say_what_to_write(text, says):
    from host.search.config import SearchConfig

    with pytest.raises(ConfigError) as err:
        SearchConfig(devices=(), device_pools=(text,))
    assert says in err.value.message


def test_a_pool_and_a_device_may_not_share_a_name():
    from host.search.config import SearchConfig

    with pytest.raises(ConfigError, match="given twice"):
        SearchConfig(devices=("local",), device_pools=("local=a,b",))


def test_a_pool_by_tag_needs_a_fleet_file_and_expands_in_file_order(tmp_path):
    from host.fleet.file import load_fleet
    from host.search.config import SearchConfig
    from host.search.devices import PoolSpec

    with pytest.raises(ConfigError, match="no fleet file"):
        SearchConfig(devices=(), device_pools=("pis=tag:pi5",))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[device]]\nname = "a"\naddress = "pi@10.0.0.5"\ntags = ["pi5", "lab"]\n'
                     '[[device]]\nname = "b"\naddress = "pi@10.0.0.6"\ntags = ["pi4"]\n'
                     '[[device]]\nname = "c"\naddress = "pi@10.0.0.7"\ntags = ["pi5"]\n')
    config = SearchConfig(devices=(), fleet=str(fleet), device_pools=("pis=tag:pi5",))
    (spec,) = config.pools()
    assert spec.boards(load_fleet(fleet)) == ["a", "c"]
    assert PoolSpec.parse("x=tag:pi5+lab").boards(load_fleet(fleet)) == ["a"]
    with pytest.raises(ConfigError, match="listed twice"):
        PoolSpec.parse("x=tag:pi5,a").boards(load_fleet(fleet))
    with pytest.raises(ConfigError, match="matches tags"):
        PoolSpec.parse("x=tag:jetson").boards(load_fleet(fleet))
