"""``export.dynamic``: the exported model's batch axis is free, and nothing else.

Ultralytics' dynamic ONNX export frees height and width too (and so the anchor count of the
output); the export stage fixes them to ``train.imgsz`` (``stages.export.batch_axis_only``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.backends import open_runner
from stages.backends.base import predict_all
from tests.conftest import smooth_images

IMGSZ = 64
SIZES = (1, 2, 8)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained YOLO11n checkpoint exported by Ultralytics at 64 px, static (batch 1) and dynamic."""
    from stages.core.runtime import import_ultralytics

    root = tmp_path_factory.mktemp("dynamic-export")
    ultralytics = import_ultralytics(root)
    checkpoint = root / "model.pt"
    ultralytics.YOLO("yolo11n.yaml", task="detect").save(str(checkpoint))
    made = {"root": root}
    for name, dynamic in (("static", False), ("dynamic", True)):
        exported = ultralytics.YOLO(str(checkpoint), task="detect").export(
            format="onnx", imgsz=IMGSZ, opset=17, simplify=True, dynamic=dynamic, batch=1, device="cpu", verbose=False
        )
        made[name] = Path(exported).rename(root / f"{name}.onnx")
    return made


@pytest.mark.parametrize("simplify", [True, False])
def test_dynamic_export_frees_the_batch_axis_alone_and_runs_at_every_size(exports, tmp_path, simplify):
    import shutil

    from stages.export import batch_axis_only, free_axes

    assert free_axes(exports["dynamic"]) == {"images": [0, 2, 3], "output0": [0, 2]}, "what Ultralytics exports"
    path = tmp_path / "model.onnx"
    shutil.copy(exports["dynamic"], path)
    batch_axis_only(path, IMGSZ, simplify)
    assert free_axes(path) == {"images": [0], "output0": [0]}

    runner = open_runner("onnxruntime", path, workspace=exports["root"])
    assert runner.batch is None
    x = smooth_images(max(SIZES), IMGSZ, seed=4)
    static = predict_all(open_runner("onnxruntime", exports["static"], workspace=exports["root"]), x)
    for size in SIZES:
        out = np.concatenate([runner.predict(x[i : i + size]) for i in range(0, len(x), size)])
        assert out.shape == static.shape
        # Per image, the same outputs at every batch size and as the static export's.
        np.testing.assert_allclose(out, static, atol=1e-3, err_msg=f"batch {size}")


def test_an_axis_left_free_is_refused(tmp_path):
    """An output whose size depends on the data (here NonZero's) cannot be fixed: the export is refused."""
    import onnx
    from onnx import TensorProto, helper

    from stages.core.errors import ExportError
    from stages.export import batch_axis_only

    graph = helper.make_graph(
        [helper.make_node("NonZero", ["images"], ["output0"])],
        "data-dependent",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.INT64, [4, "found"])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ExportError, match=r"still free: \{'output0': \[1\]\}"):
        batch_axis_only(path, IMGSZ, simplify=False)
