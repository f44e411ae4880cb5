"""Small stage pieces: model resolution, engine skip/required, data version, offline Ultralytics set-up."""

import json
from pathlib import Path

import pytest
import yaml

from stages import build_engine
from stages.core.config import parse_params
from stages.core.data_version import dvc_lock_stage
from stages.core.errors import ConfigError, EngineUnavailable
from stages.reporting.card_sections import data_version, trainer_text
from stages.training.outputs import read_results_csv
from stages.training.spec import resolve_model
from tests.conftest import cuda_available


@pytest.fixture
def ultralytics_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    assert spec and spec.origin
    return Path(spec.origin).parent


def test_bundled_model_yaml_is_accepted(tmp_path: Path, ultralytics_root: Path):
    assert resolve_model("yolo11n.yaml", tmp_path, ultralytics_root) == "yolo11n.yaml"


def test_local_weights_are_resolved_to_absolute_paths(tmp_path: Path, ultralytics_root: Path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mine.pt").write_bytes(b"x")
    assert resolve_model("weights/mine.pt", tmp_path, ultralytics_root) == str(tmp_path / "weights" / "mine.pt")


@pytest.mark.parametrize("name", ["yolo11n.pt", "weights/missing.pt", "https://example.com/y.pt"])
def test_names_that_would_download_are_refused(tmp_path: Path, ultralytics_root: Path, name: str):
    with pytest.raises(ConfigError, match="never downloaded") as err:
        resolve_model(name, tmp_path, ultralytics_root)
    assert err.value.key == "train.model"


def test_unknown_model_yaml_is_refused(tmp_path: Path, ultralytics_root: Path):
    with pytest.raises(ConfigError, match="no local file"):
        resolve_model("yolo99z.yaml", tmp_path, ultralytics_root)


def test_results_csv_columns_are_renamed(tmp_path: Path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B),lr/pg0\n1,2.5,3.0,0.1,0.05,0.001\n")
    rows = read_results_csv(csv)
    assert rows == [
        {"epoch": 1.0, "time_s": 2.5, "train_box_loss": 3.0, "map50": 0.1, "map50_95": 0.05, "lr_pg0": 0.001}
    ]


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU path; this machine has a GPU")
def test_engine_is_skipped_without_gpu_and_required_fails(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "best.pt").write_bytes(b"weights")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "export.json").write_text(json.dumps({"exported": 1}))
    cfg = build_engine.BuildEngineConfig.from_params(parse_params({}), tmp_path)
    result = build_engine.run(cfg)
    assert result.status == "skipped" and "CUDA" in result.reason
    record = json.loads((tmp_path / "reports" / "engine.json").read_text())
    assert record["status"] == "skipped" and record["reason"] == result.reason
    numbers = json.loads((tmp_path / "metrics" / "engine.json").read_text())
    assert numbers["built"] == 0 and all(isinstance(v, (int, float)) for v in numbers.values())
    assert "reports/engine.json" in (tmp_path / "models" / "engine" / "README.md").read_text()
    assert not (tmp_path / "models" / "engine" / "model.engine").exists()

    required = build_engine.BuildEngineConfig.from_params(parse_params({"engine": {"required": True}}), tmp_path)
    with pytest.raises(EngineUnavailable, match=r"engine\.required") as err:
        build_engine.run(required)
    assert err.value.key == "engine.required"


def test_engine_after_a_failed_gate_is_skipped_even_when_required(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "best.pt").write_bytes(b"weights")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "export.json").write_text(json.dumps({"exported": 0}))
    required = build_engine.BuildEngineConfig.from_params(parse_params({"engine": {"required": True}}), tmp_path)
    result = build_engine.run(required)
    assert result.status == "skipped" and "evaluation gate failed" in result.reason
    assert "evaluation gate failed" in (tmp_path / "models" / "engine" / "README.md").read_text()


def test_data_version_prefers_dvc_lock(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "aaa.dir", "path": "dataset"}]}))
    assert data_version(tmp_path, "data/dataset").startswith("aaa.dir")
    lock = {"stages": {"prepare": {"deps": [{"path": "data/dataset", "md5": "bbb.dir", "nfiles": 3, "size": 10}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert data_version(tmp_path, "data/dataset").startswith("bbb.dir (3 files")
    assert data_version(tmp_path / "nowhere", "data/dataset").startswith("unknown")


def test_dvc_lock_is_read_as_dvc_reads_it(tmp_path: Path):
    """One reader of dvc.lock for the gate, the data version, the training spec and the recorded outputs,
    in YAML 1.2 as DVC writes and compares it (PyYAML read ``1e-3`` as a string and ``no`` as false)."""
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    params:\n      params.yaml:\n"
        "        train.lr0: 1e-3\n        train.optimizer: no\n"
    )
    recorded = dvc_lock_stage(tmp_path, "train")["params"]["params.yaml"]
    assert recorded == {"train.lr0": 0.001, "train.optimizer": "no"}
    assert dvc_lock_stage(tmp_path, "evaluate") == {}
    assert dvc_lock_stage(tmp_path / "nowhere", "train") == {}


def test_data_version_outside_a_dvc_project_is_a_clear_error(tmp_path: Path):
    from stages.core.data_version import folder_version
    from stages.core.errors import DatasetError

    (tmp_path / "data" / "dataset").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not a DVC workspace"):
        folder_version(tmp_path, "data/dataset")
    with pytest.raises(DatasetError, match="not found"):
        folder_version(tmp_path, "data/missing")


def test_the_card_names_what_ran_the_training_loop():
    assert trainer_text({"trainer": "ultralytics"}) == ", trained by Ultralytics' trainer"
    assert trainer_text({"trainer": "lightning"}).startswith(", trained by Lightning (Ultralytics' model")
    assert trainer_text({}) == "", "a record without the key says nothing rather than guess"
