"""TensorRT builder: an engine from a prepared ONNX model, with its profile, timing cache and sidecar.

TensorRT 10.12+ and 11 build *strongly typed* networks: the precision comes from the ONNX model
itself, not from builder flags, so the model is prepared per precision before it gets here
(``stages/deploy/engine.py``: FP32 as exported, FP16 converted, INT8 as signed symmetric Q/DQ).
:func:`build` checks a Q/DQ model against TensorRT's rules first (``tensorrt_lint.check_qdq``), so a
model the parser would refuse fails here with the breaches named.

**Profile** (:func:`profile_shapes`). The image input's only free axis may be the batch: an
optimization profile spans ``engine.batch_sizes`` (min, the first as opt, max); the runner refuses
larger batches. A static batch serves its own size only. Free height or width (Ultralytics'
``dynamic=True`` frees them too) is refused, naming the axes.

**Timing cache** (:func:`timing_cache_file`). Kernel timings are valid for one TensorRT version on
one GPU architecture: the cache file is named after both (``timing-trt10.13.0.35-sm90.cache``), so
another GPU or TensorRT starts its own instead of being offered a foreign one. A cache TensorRT
rejects anyway (``set_timing_cache`` returns false) is replaced by an empty one, with a warning.

The build runs on the CUDA device asked for (``cuda``: the current one, ``cuda:N``), and the
sidecar records that device's name and compute capability.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stages.backends.base import Precision
from stages.backends.tensorrt import Sidecar, cuda_index, recorded_onnx, require_tensorrt, sidecar_path
from stages.backends.tensorrt_lint import check_qdq
from stages.core.common import file_sha256
from stages.core.errors import BackendUnavailable, EngineUnavailable

log = logging.getLogger(__name__)


def profile_shapes(onnx_path: Path, batch_sizes: list[int]) -> tuple[str, dict[str, list[int]]]:
    """The input name and the optimization profile (min, opt, max) that covers ``batch_sizes``.

    A static batch allows only its own size; a dynamic one spans the smallest to the largest
    requested size, tuned for the first.

    Raises:
        EngineUnavailable: When an axis other than the batch is free, or a static batch cannot serve
            the requested sizes.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    first = graph.input[0]
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in first.type.tensor_type.shape.dim
    ]
    free = [i for i, d in enumerate(dims) if d < 0 and i > 0]
    if free:
        names = {1: "channels", 2: "height", 3: "width"}
        raise EngineUnavailable(
            f"the ONNX input {first.name} {dims} has free axes besides the batch "
            f"({', '.join(names.get(i, str(i)) for i in free)}); an engine needs a fixed image size: "
            "export a dynamic batch axis only",
            path=onnx_path,
        )
    rest = dims[1:]
    if dims[0] > 0:
        if any(b != dims[0] for b in batch_sizes):
            raise EngineUnavailable(
                f"the ONNX model has a static batch of {dims[0]} but batch sizes {batch_sizes} were asked for "
                "(set export.dynamic: true, or matching batch sizes)",
                path=onnx_path,
            )
        fixed = [dims[0], *rest]
        return first.name, {"min": fixed, "opt": fixed, "max": fixed}
    return first.name, {
        "min": [min(batch_sizes), *rest],
        "opt": [batch_sizes[0], *rest],
        "max": [max(batch_sizes), *rest],
    }


def timing_cache_file(folder: Path, tensorrt: str, capability: str) -> Path:
    """The timing cache of TensorRT ``tensorrt`` on GPUs of compute ``capability`` ("9.0") in ``folder``."""
    return folder / f"timing-trt{tensorrt}-sm{capability.replace('.', '')}.cache"


def apply_timing_cache(config: Any, cache_file: Path) -> None:
    """Give the builder ``config`` the timing cache in ``cache_file`` (an empty one when absent or rejected).

    Raises:
        EngineUnavailable: When TensorRT rejects even an empty cache.
    """
    data = cache_file.read_bytes() if cache_file.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        return
    log.warning("TensorRT rejected the timing cache %s; building with an empty one", cache_file)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise EngineUnavailable("TensorRT rejected an empty timing cache", path=cache_file)


def build(
    onnx_path: Path,
    engine: Path,
    *,
    precision: Precision,
    batch_sizes: list[int],
    workspace_gib: float,
    timing_cache_dir: Path,
    source_onnx: Path,
    device: str = "cuda",
) -> Sidecar:
    """Build ``engine`` from the prepared ``onnx_path`` with TensorRT's builder; write its sidecar.

    Args:
        onnx_path: The ONNX model prepared for ``precision`` (``stages.deploy.engine.engine_onnx``).
        engine: Where to write the serialized engine.
        precision: What ``onnx_path`` holds (recorded in the sidecar).
        batch_sizes: The batch sizes the engine must serve.
        workspace_gib: The builder's workspace memory limit.
        timing_cache_dir: Where the timing caches live (one file per TensorRT version and GPU
            architecture, :func:`timing_cache_file`): read when present, written back after the build.
        source_onnx: The checked FP32 model the engine derives from (its path and hash go in the sidecar).
        device: ``cuda`` (the current device) or ``cuda:N``.

    Raises:
        EngineUnavailable: When TensorRT is missing, the model breaks TensorRT's Q/DQ rules, or
            TensorRT cannot parse or build it.
    """
    # What can be checked without TensorRT is checked first, so it fails the same way everywhere.
    check_qdq(onnx_path)
    input_name, shapes = profile_shapes(onnx_path, batch_sizes)
    try:
        require_tensorrt()
    except BackendUnavailable as exc:
        raise EngineUnavailable(str(exc)) from None
    import tensorrt as trt
    import torch

    index = cuda_index(device)
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    capability = f"{major}.{minor}"
    cache_file = timing_cache_file(timing_cache_dir, trt.__version__, capability)
    with torch.cuda.device(index):  # TensorRT builds on the current CUDA device
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # TensorRT 10 builds strongly typed only when asked; 11 always does (the flag may be gone there).
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineUnavailable(f"TensorRT cannot parse {onnx_path.name}: {errors}", path=onnx_path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        if precision == "fp32":
            # TensorRT runs FP32 convolutions in TF32 unless told not to; an fp32 engine means FP32.
            config.clear_flag(trt.BuilderFlag.TF32)
        apply_timing_cache(config, cache_file)
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineUnavailable("TensorRT's builder returned no engine (see its log above)", path=onnx_path)
        engine.parent.mkdir(parents=True, exist_ok=True)
        engine.write_bytes(bytes(serialized))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    sidecar = Sidecar(
        tensorrt=trt.__version__,
        gpu=torch.cuda.get_device_name(index),
        compute_capability=capability,
        precision=precision,
        input_name=input_name,
        shapes=shapes,
        onnx=recorded_onnx(engine, source_onnx),
        onnx_sha256=file_sha256(source_onnx),
    )
    sidecar_path(engine).write_text(json.dumps(sidecar.model_dump(), indent=2) + "\n", encoding="utf-8")
    return sidecar
