"""Bad input to `sculpt-host search` fails fast with a clear message and leaves no run behind."""

from __future__ import annotations

import pytest

from host.cli.main import main
from host.search.journal import JOURNAL_NAME


def test_unknown_model_and_dataset(tmp_path, capsys):
    assert main(["search", "--model", "resnet7", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet7'" in err and "resnet20" in err
    assert main(["search", "--data", "imagenet", "--out", str(tmp_path / "b")]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert not (tmp_path / "a" / JOURNAL_NAME).exists()


def test_bad_target(tmp_path, capsys):
    assert main(["search", "--target-latency", "fast", "--out", str(tmp_path / "c")]) == 2
    assert "cannot read target 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize("flag,field,strategy", [("--dyna", "dyna", "evolution"), ("--screen", "screen", "random"),
                                                 ("--proxy-plans", "proxy_plans", "evolution")])
def test_ppo_options_need_a_count_and_the_ppo_strategy(tmp_path, capsys, flag, field, strategy):
    from host.cli.main import build_parser
    from host.cli.search_cmd import build_config

    assert getattr(build_config(build_parser().parse_args(["search", flag, "8"])).ppo, field) == 8
    assert getattr(build_config(build_parser().parse_args(["search"])).ppo, field) == 0
    assert main(["search", flag, "-2", "--out", str(tmp_path / "d")]) == 2
    assert f"{flag} -2 must be 0 (off) or more" in capsys.readouterr().err
    assert main(["search", flag, "8", "--strategy", strategy, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"--strategy {strategy} has none" in err and "hint:" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_unreachable_device_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["search", "--device", "grpc://127.0.0.1:9", "--out", str(tmp_path / "d")])
    assert code == 3
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # no checkpoint training started
    assert not (tmp_path / "d" / JOURNAL_NAME).exists()


def test_resume_of_a_missing_run(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no search journal" in capsys.readouterr().err


def test_resume_takes_a_larger_budget(tmp_path, monkeypatch):
    """`--resume RUN --budget N` continues the stored search up to N candidates; without --budget, the stored
    budget stands."""
    from host.search.config import SearchConfig
    from host.search.runner import SearchRunner

    SearchRunner.start(SearchConfig(out=tmp_path / "run", budget=6, devices=("local",)))
    budgets = []

    class Stop(Exception):
        pass

    def run(self):
        budgets.append(self.config.budget)
        raise Stop

    monkeypatch.setattr(SearchRunner, "run", run)
    for extra in (["--budget", "20"], []):
        with pytest.raises(Stop):
            main(["search", "--resume", str(tmp_path / "run"), *extra])
    assert budgets == [20, 6]
