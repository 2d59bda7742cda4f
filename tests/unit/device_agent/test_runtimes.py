import sys

import pytest

from device_agent.artifact import PTE, TFLITE
from device_agent.errors import AgentError
from device_agent.runtimes import all_statuses, resolve, status


def test_both_runtimes_are_found_without_importing_them():
    before = {"torch" in sys.modules, "executorch" in sys.modules}
    statuses = {s.name: s for s in all_statuses()}
    assert statuses["executorch"].available and statuses["executorch"].kind == PTE
    assert statuses["litert"].available and statuses["litert"].kind == TFLITE
    assert statuses["litert"].version
    assert {"torch" in sys.modules, "executorch" in sys.modules} == before


def test_resolve_by_kind_and_by_name():
    assert resolve("", PTE).name == "executorch"
    assert resolve("", TFLITE).name == "litert"
    assert resolve("litert", TFLITE).name == "litert"
    with pytest.raises(AgentError, match="cannot run a .pte"):
        resolve("litert", PTE)
    with pytest.raises(AgentError, match="unknown runtime"):
        resolve("tvm", PTE)


def test_missing_runtime_is_failed_precondition_naming_the_extra(monkeypatch):
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    st = status("litert")
    assert not st.available and "autosculpt[agent,litert]" in st.unavailable_reason
    with pytest.raises(AgentError) as err:
        resolve("", TFLITE)
    assert err.value.code == "FAILED_PRECONDITION" and "pip install 'autosculpt[agent,litert]'" in err.value.message
