"""The Lightning backend on one CUDA GPU: 16-mixed (Lightning's GradScaler) trains and writes Ultralytics' best.pt.

Skipped without CUDA (not run on the CPU-only development machine: the CUDA path is checked against
Lightning's source only there).
"""

from __future__ import annotations

import pytest

from tests.conftest import cuda_available, tiny_training_workspace

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU; none is visible to PyTorch here"),
]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_lightning_backend_trains_with_mixed_precision_on_cuda(tmp_path, precision):
    pytest.importorskip("lightning", reason="Lightning is not installed (pip install 'yolo-pipeline[lightning]')")
    from stages.core.config import parse_params
    from stages.training import spec
    from stages.training.lightning.fit import fit

    _root, data_yaml = tiny_training_workspace(tmp_path)
    train = {"backend": "lightning", "device": "0", "epochs": 2, "imgsz": 64, "batch": 4, "workers": 0}
    hyper = parse_params({"train": {**train, "lightning": {"precision": precision}}}).train
    run = tmp_path / "run"
    spec.start_run_dir(run, "fp")
    toolbox = fit(hyper, data_yaml, run, "yolo11n.yaml", spec.trainer_settings(hyper))
    assert toolbox.device.type == "cuda" and toolbox.amp
    assert (run / "weights" / "best.pt").is_file()
    assert len((run / "results.csv").read_text().splitlines()) == 3
