"""TensorRT through its own Python API: build an engine from the checked ONNX model, and run it.

TensorRT 10.12+ and 11 build *strongly typed* networks: the precision comes from the ONNX model
itself, not from builder flags. So the ONNX model is prepared per precision first, with no TensorRT
needed (and tested where TensorRT is absent): FP32 as exported, FP16 converted by ONNX Runtime's
float16 tool (inputs and outputs kept float32), INT8 as a Q/DQ model with signed, symmetric scales
(TensorRT takes no zero points). The build uses an optimization profile that covers the requested
batch sizes (when the ONNX batch axis is dynamic) and a persistent timing cache, so rebuilds are fast.

Every engine gets a sidecar JSON (``<engine>.json``): the TensorRT version, the GPU and its compute
capability, the precision, the input shapes, and the hash of the ONNX file it was built from. An
engine only runs on the GPU and TensorRT it was built for, so :func:`load` refuses one whose sidecar
does not match, naming each difference, instead of failing obscurely or running a stale engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.common import file_sha256
from stages.errors import BackendUnavailable, EngineUnavailable


class Sidecar(BaseModel):
    """What an engine was built for and from; written next to it as ``<engine>.json``."""

    model_config = ConfigDict(frozen=True)

    tensorrt: str
    gpu: str
    compute_capability: str  # "9.0"
    precision: Precision
    input_name: str
    shapes: dict[str, list[int]]  # the optimization profile: min, opt, max
    onnx_sha256: str


def sidecar_path(engine: Path) -> Path:
    """Where the sidecar of ``engine`` lives."""
    return engine.with_name(engine.name + ".json")


def sidecar_mismatch(recorded: Sidecar, tensorrt: str, gpu: str, capability: str) -> list[str]:
    """How the machine differs from what the engine was built for (empty: it may run here)."""
    found = []
    if recorded.tensorrt != tensorrt:
        found.append(f"built with TensorRT {recorded.tensorrt}, this is TensorRT {tensorrt}")
    if recorded.compute_capability != capability:
        found.append(f"built for compute capability {recorded.compute_capability}, this GPU has {capability}")
    if recorded.gpu != gpu:
        found.append(f"built on {recorded.gpu}, this GPU is {gpu}")
    return found


def profile_shapes(onnx_path: Path, batch_sizes: list[int]) -> tuple[str, dict[str, list[int]]]:
    """The input name and the optimization profile (min, opt, max) that covers ``batch_sizes``.

    A static batch axis allows only its own size; a dynamic one spans the smallest to the largest
    requested size, tuned for the first.

    Raises:
        EngineUnavailable: When a static batch cannot serve the requested sizes.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    first = graph.input[0]
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in first.type.tensor_type.shape.dim
    ]
    if any(d < 0 for d in dims[1:]):
        raise EngineUnavailable(f"the ONNX input {first.name} has a dynamic image size {dims}; export a fixed imgsz")
    rest = dims[1:]
    if dims[0] > 0:
        if any(b != dims[0] for b in batch_sizes):
            raise EngineUnavailable(
                f"the ONNX model has a static batch of {dims[0]} but batch sizes {batch_sizes} were asked for "
                "(set export.dynamic: true, or matching batch sizes)"
            )
        fixed = [dims[0], *rest]
        return first.name, {"min": fixed, "opt": fixed, "max": fixed}
    return first.name, {
        "min": [min(batch_sizes), *rest],
        "opt": [batch_sizes[0], *rest],
        "max": [max(batch_sizes), *rest],
    }


def fp16_onnx(source: Path, out: Path) -> Path:
    """An FP16 copy of ``source`` (initializers and compute in half; inputs and outputs stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_nodes(model.graph)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def _sort_nodes(graph: Any) -> None:
    """Put ``graph``'s nodes in topological order, as ONNX requires.

    The float16 tool appends the float32-to-float16 Casts of the inputs at the end of the node list.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise EngineUnavailable(f"the FP16 model has a cycle or a dangling input at {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def engine_onnx(source: Path, precision: Precision, out: Path, calibration: np.ndarray | None = None) -> Path:
    """The ONNX model a strongly typed TensorRT network is built from, for ``precision``.

    Args:
        source: The FP32 ONNX model that passed the parity check.
        precision: ``fp32`` (a copy), ``fp16`` (converted) or ``int8`` (signed symmetric Q/DQ).
        out: Where to write it.
        calibration: Letterboxed train images for INT8.

    Raises:
        EngineUnavailable: INT8 without calibration images.
    """
    if precision == "fp32":
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out)
        return out
    if precision == "fp16":
        return fp16_onnx(source, out)
    if calibration is None or not len(calibration):
        raise EngineUnavailable("an INT8 engine needs calibration images (deploy.int8.calibration_images)")
    from stages.deploy.int8 import quantize

    quantize(source, out, calibration, "minmax", symmetric=True)
    return out


def build(
    onnx_path: Path,
    engine: Path,
    *,
    precision: Precision,
    batch_sizes: list[int],
    workspace_gib: float,
    timing_cache: Path,
    source_onnx: Path,
) -> Sidecar:
    """Build ``engine`` from the prepared ``onnx_path`` with TensorRT's builder; write its sidecar.

    Args:
        onnx_path: The ONNX model prepared by :func:`engine_onnx`.
        engine: Where to write the serialized engine.
        precision: What ``onnx_path`` holds (recorded in the sidecar).
        batch_sizes: The batch sizes the engine must serve.
        workspace_gib: The builder's workspace memory limit.
        timing_cache: A persistent timing cache: read when present, written back after the build.
        source_onnx: The checked FP32 model the engine derives from (its hash goes in the sidecar).

    Raises:
        EngineUnavailable: When TensorRT is missing, or cannot parse or build the network.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineUnavailable(f"TensorRT is not installed ({exc}); install the project's 'gpu' extra") from None
    import torch

    input_name, shapes = profile_shapes(onnx_path, batch_sizes)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"TensorRT cannot parse {onnx_path.name}: {errors}", path=onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineUnavailable("TensorRT's builder returned no engine (see its log above)", path=onnx_path)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    major, minor = torch.cuda.get_device_capability(0)
    sidecar = Sidecar(
        tensorrt=trt.__version__,
        gpu=torch.cuda.get_device_name(0),
        compute_capability=f"{major}.{minor}",
        precision=precision,
        input_name=input_name,
        shapes=shapes,
        onnx_sha256=file_sha256(source_onnx),
    )
    sidecar_path(engine).write_text(json.dumps(sidecar.model_dump(), indent=2) + "\n", encoding="utf-8")
    return sidecar


def read_sidecar(engine: Path) -> Sidecar:
    """The sidecar of ``engine``.

    Raises:
        BackendUnavailable: When it is missing or unreadable (an engine of unknown origin is not run).
    """
    path = sidecar_path(engine)
    try:
        return Sidecar.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"engine sidecar {path} is missing or invalid ({exc}); rebuild the engine") from None


class TensorRTRunner:
    """A deserialized engine with its execution context; inputs and outputs live in CUDA memory."""

    def __init__(self, engine_path: Path, sidecar: Sidecar) -> None:
        import tensorrt as trt
        import torch

        self.torch, self.trt = torch, trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        shapes = sidecar.shapes
        self.batch = shapes["min"][0] if shapes["min"][0] == shapes["max"][0] else None
        self.max_batch = shapes["max"][0]
        self.inputs = [TensorMeta(name=self.input, shape=list(shapes["max"]), dtype="float32")]
        self.outputs = [
            TensorMeta(name=self.output, shape=list(self.engine.get_tensor_shape(self.output)), dtype="float32")
        ]
        self.info = RunInfo(
            backend="tensorrt",
            provider=f"TensorRT {trt.__version__}",
            device=f"cuda:0 {torch.cuda.get_device_name(0)}",
            precision=sidecar.precision,
            threads=None,
        )
        self._out: dict[tuple[int, ...], Any] = {}

    def place(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to("cuda:0")

    def forward(self, placed: Any) -> Any:
        torch = self.torch
        self.context.set_input_shape(self.input, tuple(placed.shape))
        shape = tuple(self.context.get_tensor_shape(self.output))
        if shape not in self._out:
            self._out[shape] = torch.empty(shape, dtype=torch.float32, device="cuda:0")
        out = self._out[shape]
        self.context.set_tensor_address(self.input, placed.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendUnavailable("TensorRT failed to enqueue the engine")
        torch.cuda.synchronize()
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(self.place(x)).cpu().numpy()

    def close(self) -> None:
        self._out.clear()
        del self.context, self.engine


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> TensorRTRunner:
    """The engine at ``path`` on CUDA, after checking its sidecar against this GPU and TensorRT.

    Raises:
        BackendUnavailable: Without CUDA or TensorRT, or when the sidecar does not match (each difference named).
    """
    sidecar = read_sidecar(path)
    if sidecar.precision != precision:
        raise BackendUnavailable(f"{path} is a {sidecar.precision} engine, not {precision}")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT is not installed ({exc}); install the project's 'gpu' extra") from None
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise BackendUnavailable(
            f"a TensorRT engine runs on a CUDA GPU (asked for {device}; CUDA visible: {torch.cuda.is_available()})"
        )
    major, minor = torch.cuda.get_device_capability(0)
    differences = sidecar_mismatch(sidecar, trt.__version__, torch.cuda.get_device_name(0), f"{major}.{minor}")
    if differences:
        raise BackendUnavailable(f"refusing to run {path}: " + "; ".join(differences) + "; rebuild it here")
    return TensorRTRunner(path, sidecar)
