import subprocess
import sys

import pytest

from device_agent.artifact import PTE, TFLITE
from device_agent.errors import AgentError
from device_agent.runtimes import all_statuses, resolve, status


def test_both_runtimes_are_found_without_importing_them():
    statuses = {s.name: s for s in all_statuses()}
    assert statuses["executorch"].available and statuses["executorch"].kind == PTE
    assert statuses["litert"].available and statuses["litert"].kind == TFLITE
    assert statuses["litert"].version
    # in a fresh interpreter: this one has long imported torch for other tests
    code = ("import sys\nfrom device_agent.runtimes import all_statuses\nfound = all_statuses()\n"
            "print(len(found), [m for m in ('torch', 'executorch', 'ai_edge_litert', 'tflite_runtime') "
            "if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split()[0] == str(len(statuses))
    assert proc.stdout.strip().endswith("[]"), proc.stdout


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


@pytest.mark.executorch
def test_executorch_worker_imports_the_runtime_but_not_the_exporter():
    code = ("import sys\nfrom device_agent.runtimes import executorch as et\net.warm_up_import()\n"
            "print(sorted(m for m in ('torchao', 'executorch.exir', 'executorch.runtime') if m in sys.modules))\n"
            "print(et.current_threads() >= 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = proc.stdout.strip().splitlines()
    # The runtime is loaded; neither torchao nor the exporter package is, and no bare stand-in is left
    # behind, so a later `import executorch.exir` would run the real package.
    assert lines[-2] == "['executorch.runtime']"
    assert lines[-1] == "True"
