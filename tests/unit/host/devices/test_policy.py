"""The one benchmark policy type: its presets are the figures the search and its final stage time with, the
energy variant lifts only the run cap, and a stored config (also one written before this type) reads back."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from device_agent.bench import Policy
from host.devices.policy import ENERGY_MAX_RUNS, BenchPolicy
from host.errors import ConfigError
from host.search.config import EvalConfig, SearchConfig


def test_presets():
    search, final = BenchPolicy.search(), BenchPolicy.final()
    assert (search.warmup_runs, search.min_runs, search.min_seconds, search.max_runs) == (5, 20, 0.2, 400)
    assert (final.warmup_runs, final.min_runs, final.min_seconds, final.max_runs) == (10, 50, 1.0, 1000)
    assert search.max_seconds == final.max_seconds == 10.0 and search.warmup_seconds == 0.2
    # the default is the agent's own policy, field for field
    assert asdict(BenchPolicy()) == asdict(Policy())
    assert BenchPolicy.search(runs=8).warmup_runs == 2 and BenchPolicy.search(runs=400).max_runs == 8000
    assert BenchPolicy.timed(5, 30.0).max_seconds == 120.0  # a long window is never cut by the time cap


def test_energy_lifts_the_run_cap_only():
    policy = BenchPolicy.search().for_energy()
    assert policy.max_runs == ENERGY_MAX_RUNS
    assert {f.name: getattr(policy, f.name) for f in fields(policy) if f.name != "max_runs"} == \
        {f.name: getattr(BenchPolicy.search(), f.name) for f in fields(policy) if f.name != "max_runs"}


def test_the_protocol_message_has_every_field():
    message = BenchPolicy.final().to_proto()
    assert {f.name: getattr(message, f.name) for f in fields(BenchPolicy)} == asdict(BenchPolicy.final())


def test_impossible_policies_are_refused():
    with pytest.raises(ValueError, match="1 run"):
        BenchPolicy.search(runs=0)


def test_search_config_stores_its_policies_and_reads_old_journals():
    config = SearchConfig(evaluation=EvalConfig(bench=BenchPolicy.search(runs=7, seconds=0.1),
                                                final_bench=BenchPolicy.final(seconds=0.3)))
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = SearchConfig().to_dict()  # a journal of the version before: four flat fields
    del old["evaluation"]["bench"], old["evaluation"]["final_bench"]
    old["evaluation"].update(warmup_runs=5, min_runs=20, min_time_s=0.2, final_min_time_s=1.0)
    assert SearchConfig.from_dict(old) == SearchConfig()  # the same policies the old version timed with
    broken = SearchConfig().to_dict()
    broken["evaluation"]["bench"]["surprise"] = 1
    with pytest.raises(ConfigError, match="another AutoSculpt version"):
        SearchConfig.from_dict(broken)
