"""End to end: the whole chain on tiny data on CPU, through `dvc repro` and through the Prefect flow.

One workspace (a copy of the project with a tiny sample dataset and tiny params, reproduced once per
test run by `dvc repro` and copied: tests/e2e/workspace.py) is shared by the tests of this module,
which run in order: the full `dvc repro` it was made by, then checks that each entry point reuses
the other's results, that a param change re-runs only the stages that read it, and that an unknown key
stops the chain with a clear message, that a failing gate is recorded, exports nothing and is
refused by the flow and by promotion, and that an export failing its parity check stops the chain
and promotion. After every test the input dataset is unchanged, and no process the tests started
ever tried to reach the network (``tests/netguard``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from stages import PIPELINE
from tests.conftest import tree_digest
from tests.e2e.workspace import GUARDED_ENV, Workspace, network_calls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    # The reproduced workspace other modules share: its `dvc repro`, traced, is the one checked here.
    w = Workspace.with_sample_data(tmp_path_factory, "workspace", repro=True)
    w.input_digest = tree_digest(w.root / "data" / "dataset")  # type: ignore[attr-defined]
    return w


@pytest.fixture(autouse=True)
def _input_unchanged(ws: Workspace) -> Iterator[None]:
    """Every test here runs the pipeline: each must leave the input dataset exactly as it was."""
    yield
    expected = ws.input_digest  # type: ignore[attr-defined]
    assert tree_digest(ws.root / "data" / "dataset") == expected, "this test changed the input dataset"


def _guard_flow_subprocesses(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow run in this process starts DVC and Prefect's server from its environment: guard them too."""
    for name in GUARDED_ENV:
        monkeypatch.setenv(name, ws.env[name])


def _leaves(data):
    if isinstance(data, dict):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaves(value)
    elif data is not None:
        yield data


def test_dvc_repro_runs_the_whole_chain(ws: Workspace):
    # The workspace's own `dvc repro` (Workspace.build_sample_data), with no network at all and every
    # socket call of every process and thread traced where the machine allows it
    # (test_no_socket_call_left_the_machine reads the trace).
    repro = ws.reproduced()
    assert repro["returncode"] == 0, repro["output"]
    assert repro["ran"] == set(PIPELINE)

    data = yaml.safe_load((ws.root / "data/prepared/data.yaml").read_text())
    assert "path" not in data and "download" not in data

    validate = ws.json("reports/validate.json")
    assert validate["ok"] is True and validate["images"] == 24 and validate["problems"] == []
    assert (ws.root / "models/best.pt").stat().st_size > 100_000
    train = ws.json("metrics/train.json")
    assert train["epochs_run"] == 1 and train["distributed"]["world_size"] == 1
    assert all(isinstance(v, (int, float)) for v in _leaves(train)), "metrics hold numbers only"
    facts = ws.json("reports/train.json")
    assert facts["device"] == "cpu" and facts["backend"] == "none" and facts["optimizer"] == "AdamW"
    curves = (ws.root / "plots/train_curves.csv").read_text().splitlines()
    assert curves[0].startswith("epoch,") and len(curves) == 2

    evaluate = ws.json("metrics/evaluate.json")
    for key in ("map50", "map50_95", "precision", "recall", "per_class", "gates"):
        assert key in evaluate
    assert set(evaluate["per_class"]) == {"square", "disc", "triangle"}
    gates = evaluate["gates"]
    assert gates["passed"] == 1 and gates["failed"] == 0 and len(gates["checks"]) == 2
    assert all(isinstance(v, (int, float)) for check in gates["checks"].values() for v in check.values())

    export = ws.json("metrics/export.json")
    assert export["exported"] == 1 and (ws.root / "models/deploy/model.onnx").is_file()
    assert export["parity"]["passed"] == 1 and export["parity"]["images"] == 4
    assert export["parity"]["max_abs_diff_scores"] < 1e-3

    deploy = ws.json("metrics/deploy.json")
    assert set(deploy) == {"pytorch", "onnx-fp32", "onnx-int8"}
    assert all(isinstance(v, (int, float)) for v in _leaves(deploy)), "metrics hold numbers only"
    for name in ("onnx-fp32", "onnx-int8"):
        artifact = deploy[name]
        assert {"map50", "map50_95", "drop_map50_95", "size_mb", "deployable"} <= set(artifact), artifact
        assert artifact["drop_map50_95"] == pytest.approx(deploy["pytorch"]["map50_95"] - artifact["map50_95"])
    assert deploy["onnx-int8"]["integer_conv_share"] >= 0.85
    assert deploy["onnx-int8"]["size_mb"] < deploy["onnx-fp32"]["size_mb"] / 2
    facts = ws.json("reports/deploy.json")
    assert facts["onnx-int8"]["precision"] == "int8" and "head tail in float" in facts["onnx-int8"]["scheme"]
    for name, fact in facts.items():
        assert fact["deployable"] == bool(deploy[name]["deployable"]) and fact["reason"]
        assert (ws.root / fact["file"]).is_file() == fact["deployable"] or name == "onnx-fp32"

    assert ws.json("reports/export.json")["onnx"] == "models/deploy/model.onnx"
    engine = ws.json("reports/engine.json")
    assert engine["status"] == "skipped" and "CUDA" in engine["reason"]
    assert ws.json("metrics/engine.json")["built"] == 0

    rows = ws.json("metrics/benchmark.json")["backends"]
    ran = ws.json("reports/benchmark.json")
    expected = {"onnxruntime-cpu", "pytorch-cpu"}
    expected |= {"onnxruntime-cpu-int8"} if deploy["onnx-int8"]["deployable"] else set()
    assert expected <= set(rows) and set(rows) == set(ran["backends"]), ran["skipped"]
    assert ran["backends"]["onnxruntime-cpu"]["provider"].endswith("CPUExecutionProvider")
    # Only numbers in metrics: every experiment column in dvc exp show is comparable.
    for name in ("export", "engine", "benchmark", "deploy", "train", "evaluate"):
        numbers = ws.json(f"metrics/{name}.json")
        assert all(isinstance(v, (int, float)) for v in _leaves(numbers)), f"metrics/{name}.json holds text"
    for name, row in rows.items():
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["max"] and lat["p10"] <= lat["p90"] <= lat["p99"]
        assert row["iterations"] == 5 and row["warmup"] == 1 and row["batch"] == 1 and row["imgsz"] == 64
        assert row["rounds"] == 3 and row["cv"] >= 0 and row["stable"] in (0, 1)
        assert row["model_ms"] == lat["p50"] and row["end_to_end_ms"] > 0 and row["threads"] >= 1
        assert row["throughput_ips"] > 0
        assert ran["backends"][name]["precision"] == ("int8" if name.endswith("int8") else "fp32")
        assert len(ran["backends"][name]["round_p50_ms"]) == 3
        # Batch 8 where the artifact takes it: the checkpoint does, the static batch-1 ONNX models do not.
        assert set(row["throughput_ips_by_batch"]) == ({"1", "8"} if name == "pytorch-cpu" else {"1"})

    card = (ws.root / "reports/model_card.md").read_text()
    lock = yaml.safe_load((ws.root / "dvc.lock").read_text())
    data_md5 = next(d["md5"] for d in lock["stages"]["prepare"]["deps"] if d["path"] == "data/dataset")
    assert data_md5 in card
    for heading in (
        "## Evaluation",
        "### Gate",
        "## Export",
        "### Deploy artifacts",
        "## Latency",
        "## Dataset validation",
        "## Params",
    ):
        assert heading in card
    assert "| onnxruntime-cpu |" in card
    assert "(AMP off), trained by Ultralytics' trainer; best epoch" in card
    env = ws.json("reports/environment.json")
    int8_said = "INT8 convolutions run on integer" if env["cpu_int8"] else "INT8 is not expected to be faster here"
    assert int8_said in card
    assert ws.network_attempts() == [], "a process of the chain tried to reach the network"

    # Latency and throughput charts render through dvc plots, with the project's own templates.
    latency = (ws.root / "plots/latency.csv").read_text().splitlines()
    assert latency[0] == "backend,p10_ms,p50_ms,p90_ms" and len(latency) == 1 + len(rows)
    shown = ws.run("-m", "dvc", "plots", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    plots = json.loads(shown.stdout)["data"]
    expected = {"latency per backend", "throughput against batch size", "losses", "mAP", "learning rate"}
    assert expected <= set(plots), list(plots)


def test_no_socket_call_left_the_machine(ws: Workspace):
    """The whole chain, in a network namespace with no network, made no connection attempt and no
    name lookup from any process or native thread (the Python-level guard cannot see native code)."""
    log = ws.reproduced()["trace_log"]
    if log is None:
        pytest.skip("strace, or an unprivileged network namespace (unshare -rn), is not available on this machine")
    started = [line for line in log.read_text().splitlines() if "execve(" in line and "stages." in line]
    assert len(started) >= 8, "the trace did not follow the stages' processes"
    assert network_calls(log) == [], "a process of the chain tried to reach the network or look a name up"


def test_second_repro_reruns_nothing(ws: Workspace):
    proc, ran = ws.repro()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ran == {"environment"}, "only the sub-second environment fingerprint may run"
    # ... and only its cheap check: DVC removed the fingerprint before running the stage, the check
    # wrote back the one recorded, and DVC found it unchanged (nothing after it ran).
    assert "unchanged since the last full fingerprint" in proc.stdout + proc.stderr
    assert "stages.core.fingerprint" not in proc.stdout + proc.stderr


def test_flow_after_repro_reruns_nothing(ws: Workspace):
    proc = ws.run("-m", "flows.pipeline", "--workspace", str(ws.root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ran: environment\n" in proc.stdout
    assert "promoted: version 1" in proc.stdout
    production = ws.json("models/production/metadata.json")
    assert production["version"] == 1 and production["data_version"].endswith(".dir")
    assert (ws.root / "models/production.dvc").is_file()
    assert "temporary server" in (proc.stdout + proc.stderr).lower()


def test_benchmark_param_reruns_only_benchmark_and_report(ws: Workspace):
    ws.edit("benchmark", iterations=6)
    proc, ran = ws.repro()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ran == {"environment", "benchmark", "report"}
    assert all(r["iterations"] == 6 for r in ws.json("metrics/benchmark.json")["backends"].values())


def test_flow_run_is_reused_by_repro_and_publishes_artifacts(ws: Workspace, monkeypatch: pytest.MonkeyPatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    ws.edit("benchmark", warmup=2)
    _guard_flow_subprocesses(ws, monkeypatch)
    with prefect_test_harness():
        result = pipeline(workspace=str(ws.root))
        artifacts = _artifacts()
        names = _flow_run_names()
    data_md5 = yaml.safe_load((ws.root / "data/dataset.dvc").read_text())["outs"][0]["md5"]
    assert len(names) == 1 and re.fullmatch(rf"pipeline data {data_md5[:8]} params [0-9a-f]{{8}}", names[0]), names
    runs = result.stages
    assert {r.stage for r in runs if r.ran} == {"environment", "benchmark", "report"}
    assert [r.stage for r in runs] == list(PIPELINE)
    # The CLI flow run before promoted this very model: promoting it again changes nothing.
    assert result.promoted_version is None and result.unchanged_version == 1
    assert ws.json("models/production/metadata.json")["version"] == 1
    expected = {"stage-runs", "gate-verdict", "evaluation-metrics", "deploy-artifacts", "latency", "model-card"}
    expected.add("promotion")
    assert expected | {"metrics-vs-production"} <= set(artifacts)
    assert {row["backend"] for row in artifacts["latency"]} >= {"onnxruntime-cpu", "pytorch-cpu"}
    assert all(row["passed"] for row in artifacts["gate-verdict"])
    assert {row["artifact"] for row in artifacts["deploy-artifacts"]} == {"onnx-fp32", "onnx-int8"}
    # Against production as it was when the run started: version 1, promoted by the CLI run before.
    production, evaluate = ws.json("models/production/metadata.json"), ws.json("metrics/evaluate.json")
    vs_production = {row["metric"]: row for row in artifacts["metrics-vs-production"]}
    assert set(vs_production) == {"map50", "map50_95", "precision", "recall"}
    for metric, row in vs_production.items():
        assert row["production v1"] == production["metrics"][metric] and row["this run"] == evaluate[metric]

    proc, ran = ws.repro()
    assert proc.returncode == 0 and ran == {"environment"}


ARTIFACT_KEYS = (
    "metrics-vs-production",
    "stage-runs",
    "gate-verdict",
    "evaluation-metrics",
    "deploy-artifacts",
    "latency",
    "model-card",
    "promotion",
    "data-check",
)


def _flow_run_names() -> list[str]:
    """The names of the flow runs the server holds."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [run.name for run in client.read_flow_runs()]


def _artifacts() -> dict[str, Any]:
    """The latest artifact of each key the flow publishes (tables decoded), read back from the server."""
    from prefect.artifacts import Artifact

    out = {}
    for key in ARTIFACT_KEYS:
        found = Artifact.get(key)
        if found is not None:
            data = found.data
            out[key] = json.loads(data) if found.type == "table" and isinstance(data, str) else data
    return out


def test_unknown_params_key_stops_the_chain(ws: Workspace):
    with ws.edited("train", epocs=3):
        proc, ran = ws.repro()
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "unknown key 'train.epocs'" in output and "params.yaml" in output
    assert "train" not in ran


def test_failing_gate_is_recorded_exports_nothing_and_is_refused(ws: Workspace, monkeypatch: pytest.MonkeyPatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline
    from stages.core.errors import StageFailed

    production_before = tree_digest(ws.root / "models" / "production")
    with ws.edited("evaluate", min_map50=0.99):
        # A failed gate is a result: the chain completes, records it and builds nothing deployable.
        proc, ran = ws.repro()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert {"evaluate", "export", "build_engine", "benchmark", "report"} <= ran
        gates = ws.json("metrics/evaluate.json")["gates"]
        assert gates["passed"] == 0 and gates["failed"] == 1
        assert gates["checks"]["map50"] == {"value": gates["checks"]["map50"]["value"], "threshold": 0.99, "passed": 0}
        assert ws.json("metrics/export.json") == {"exported": 0}
        assert sorted(p.name for p in (ws.root / "models/deploy").iterdir()) == ["README.md"]
        assert "gate failed: map50" in (ws.root / "models/deploy/README.md").read_text()
        assert ws.json("metrics/benchmark.json")["backends"] == {}
        assert "Not deployable" in (ws.root / "reports/model_card.md").read_text()

        verdict = ws.run("-m", "stages.gate")
        assert verdict.returncode == 2
        assert "quality gate failed: map50" in verdict.stderr and "< 0.99" in verdict.stderr
        refused = ws.run("-m", "stages.promote")
        assert refused.returncode == 2 and "map50" in refused.stderr

        _guard_flow_subprocesses(ws, monkeypatch)
        with prefect_test_harness():
            with pytest.raises(StageFailed, match=r"quality gate failed: map50") as err:
                pipeline(workspace=str(ws.root))
            artifacts = _artifacts()
    assert err.value.stage == "evaluate"
    assert any(not row["passed"] for row in artifacts["gate-verdict"])
    assert tree_digest(ws.root / "models" / "production") == production_before, "a failed gate must not promote"


def test_export_parity_failure_stops_the_chain_and_promotion(ws: Workspace):
    production_before = tree_digest(ws.root / "models" / "production")
    # ONNX Runtime and PyTorch differ by float rounding (about 1e-7 here): nothing can match to 1e-12.
    with ws.edited("export", max_score_diff=1e-12, max_box_diff_px=1e-12):
        proc, ran = ws.repro()
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "failed to reproduce 'export'" in output
        assert "ONNX output differs from PyTorch" in output and "(allowed 1e-12)" in output
        assert "export" in ran and not {"build_engine", "benchmark", "report"} & ran, ran
        parity = ws.json("metrics/export.json")["parity"]
        assert parity["passed"] == 0 and parity["max_abs_diff_scores"] > 1e-12

        refused = ws.run("-m", "stages.promote")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "export parity ONNX output differs from PyTorch beyond tolerance" in refused.stderr
    assert tree_digest(ws.root / "models" / "production") == production_before


def test_no_process_tried_to_reach_the_network(ws: Workspace):
    assert ws.network_attempts() == []
