"""The executor seam: the --ray text is checked before anything connects, the inline executor hands results and
exceptions back as a cluster task would, and a search without --ray never imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from host.cluster import ClusterSpec, InlineExecutor, open_executor
from host.errors import ConfigError


@pytest.mark.parametrize("text,workers", [("local:3", 3), ("auto", None), ("ray://head:10001", None),
                                          ("10.0.0.1:6379", None)])
def test_cluster_addresses_parse(text, workers):
    assert ClusterSpec.parse(text).local_workers == workers


@pytest.mark.parametrize("text", ["local:0", "head", "ray://", "http://head:8265"])
def test_bad_cluster_addresses_say_what_to_use(text):
    with pytest.raises(ConfigError) as err:
        ClusterSpec.parse(text)
    assert "local:" in err.value.hint


def test_inline_executor_hands_back_results_and_exceptions():
    ex = open_executor(None)
    assert isinstance(ex, InlineExecutor) and ex.parallelism == 1
    shared = ex.share([1, 2])
    handles = [ex.submit(sum, shared), ex.submit(int, "x"), ex.submit(len, shared)]
    results = []
    while handles:
        handle, value = ex.next_done(handles)
        handles.remove(handle)
        results.append(value)
    assert results[0] == 3 and isinstance(results[1], ValueError) and results[2] == 2


def test_the_search_without_a_cluster_does_not_import_ray():
    code = ("import sys; from host.search.runner import SearchRunner; from host.cluster import open_executor; "
            "open_executor(None); import host.search.candidate, host.search.parallel; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
