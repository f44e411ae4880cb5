"""No network from native code: ONNX Runtime's usage telemetry stays off in every stage process.

ONNX Runtime 1.31 on Linux posts usage telemetry to ``mobile.events.data.microsoft.com`` from a
native thread once a session has lived some seconds (found with an LD_PRELOAD shim on
``getaddrinfo`` after the traced ``dvc repro`` of ``test_pipeline.py`` caught DNS lookups around
``export`` and ``benchmark``). ``stages/__init__.py`` switches it off. Whether a short stage lives
long enough to send depends on the machine's speed, so this test keeps a session alive on purpose,
in a network namespace with no network and every socket call traced, once as a stage process runs
and once with the telemetry forced back on, to show the probe does catch it.

ONNX Runtime also stays silent whenever ``CI=true`` is set (checked on 1.31.1: no lookup in 15 s,
against four without it), which is how CI runs this suite. Both runs drop ``CI`` from their
environment, as a user's machine has it: otherwise the stage run passes for the wrong reason and
the control catches nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.workspace import network_calls, no_network_trace

pytestmark = pytest.mark.e2e

PROBE = """
import sys, time
sys.path.insert(0, {repo!r})
import stages  # noqa: F401  (what every stage process imports first)
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
time.sleep(15)  # long enough for ONNX Runtime's telemetry thread to try to send
"""


def test_onnx_runtime_telemetry_stays_off_in_stage_processes(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(repo=str(REPO)))
    runs = {}
    for name, value in (("stage", None), ("forced-on", "0")):
        log = tmp_path / f"{name}.strace.log"
        trace = no_network_trace(log)
        if trace is None:
            pytest.skip("strace, or an unprivileged network namespace (unshare -rn), is not available on this machine")
        env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
        if value is not None:
            env["ORT_DISABLE_TELEMETRY"] = value  # a user's own setting is kept: here, telemetry on
        runs[name] = (subprocess.Popen([*trace, sys.executable, str(probe)], env=env, stderr=subprocess.PIPE), log)
    for name, (proc, _log) in runs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err.decode()[-2000:]}"
    assert network_calls(runs["stage"][1]) == [], "ONNX Runtime tried to reach the network from a stage process"
    # The control: with telemetry on, the same probe does catch ONNX Runtime's lookups (pinned 1.31.1).
    assert network_calls(runs["forced-on"][1]), "the probe no longer sees ONNX Runtime's telemetry: check the test"
