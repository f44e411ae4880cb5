"""TensorRT runtime: run an engine built by ``stages/backends/tensorrt_build.py``, after checking it may run.

Every engine has a sidecar JSON (``<engine>.json``, :class:`Sidecar`): the TensorRT version, the GPU
and its compute capability, the precision, the optimization profile, and the ONNX model it was built
from (its path relative to the engine's folder, and its sha256). :func:`load` refuses an engine
whose sidecar does not match this GPU and TensorRT, naming each difference, and one whose ONNX
model has changed since (a stale engine of a retrained model), instead of failing obscurely or
running the wrong model.

**Which ONNX model an engine is checked against** (:func:`expected_onnx`): a file of the recorded
name beside the engine when there is one (a deployment folder such as ``models/production`` holds
``model.onnx`` next to ``model.engine``), else the recorded path relative to the engine's folder (in
the workspace ``models/engine/model.engine`` derives from ``../deploy/model.onnx``). Neither present:
the engine's origin cannot be checked, and it is refused.

The runner works on the CUDA device it is opened for (``cuda`` is the current device, ``cuda:N``
the N-th), on a CUDA stream of its own: input copies and the engine's work are queued there and
only that stream is waited on, never the whole device. A batch larger than the optimization
profile's maximum is refused (``max_batch`` tells :func:`~stages.backends.base.predict_all` to send
less), and so is any shape TensorRT does not accept (``set_input_shape`` returns false). Outputs are
allocated in the type the engine declares (``get_tensor_dtype``) and converted to float32 on the host.

TensorRT itself is imported lazily, after :func:`require_tensorrt`, which also refuses the empty ``tensorrt``
namespace the type stubs alone leave behind (``tensorrt-stubs`` ships ``tensorrt/__init__.pyi``
only, and Python imports that folder as a namespace package).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.core.common import file_sha256
from stages.core.errors import BackendUnavailable


class Sidecar(BaseModel):
    """What an engine was built for and from; written next to it as ``<engine>.json``."""

    model_config = ConfigDict(frozen=True)

    tensorrt: str
    gpu: str
    compute_capability: str  # "9.0"
    precision: Precision
    input_name: str
    shapes: dict[str, list[int]]  # the optimization profile: min, opt, max
    onnx: str  # the ONNX model it derives from, relative to the engine's folder ("../deploy/model.onnx")
    onnx_sha256: str


def tensorrt_missing() -> str | None:
    """Why TensorRT's Python bindings cannot be used here, or ``None`` when they can.

    ``import tensorrt`` alone proves nothing: with only ``tensorrt-stubs`` installed (the type
    stubs ``make lint`` checks against) it imports an empty namespace package. The bindings are
    there when the module has a version and a ``Builder``.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); install the project's 'gpu' extra"
    if not isinstance(getattr(trt, "__version__", None), str) or not hasattr(trt, "Builder"):
        where = ", ".join(getattr(trt, "__path__", [])) or "?"
        return (
            f"'tensorrt' at {where} holds no TensorRT bindings (only type stubs, e.g. tensorrt-stubs); "
            "install the project's 'gpu' extra"
        )
    return None


def require_tensorrt() -> None:
    """Check TensorRT's bindings are here before ``import tensorrt`` (which the type checker then follows).

    Raises:
        BackendUnavailable: When it is not installed, or only its type stubs are (:func:`tensorrt_missing`).
    """
    reason = tensorrt_missing()
    if reason is not None:
        raise BackendUnavailable(reason)


def cuda_index(device: str) -> int | None:
    """The CUDA device index of ``device``: ``cuda`` is ``None`` (the current device), ``cuda:N`` is N.

    Raises:
        BackendUnavailable: For anything else (a TensorRT engine runs on a CUDA GPU only).
    """
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise BackendUnavailable(f"a TensorRT engine runs on a CUDA GPU ('cuda' or 'cuda:N'), not {device!r}")
    return int(index) if index else None


def sidecar_path(engine: Path) -> Path:
    """Where the sidecar of ``engine`` lives."""
    return engine.with_name(engine.name + ".json")


def recorded_onnx(engine: Path, source_onnx: Path) -> str:
    """How the sidecar names ``source_onnx``: relative to the folder of ``engine`` (POSIX separators)."""
    return Path(os.path.relpath(source_onnx.resolve(), engine.resolve().parent)).as_posix()


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


def expected_onnx(engine: Path, sidecar: Sidecar) -> Path | None:
    """The ONNX model ``engine`` must derive from: the recorded name beside it, else the recorded path.

    ``None`` when neither exists.
    """
    beside = engine.parent / Path(sidecar.onnx).name
    if beside.is_file():
        return beside
    recorded = Path(os.path.normpath(engine.parent / sidecar.onnx))
    return recorded if recorded.is_file() else None


def check_origin(engine: Path, sidecar: Sidecar) -> Path:
    """The ONNX model ``engine`` derives from, after checking it is the one the engine was built from.

    Raises:
        BackendUnavailable: When that model is missing, or has changed since the build (a stale engine).
    """
    onnx = expected_onnx(engine, sidecar)
    if onnx is None:
        raise BackendUnavailable(
            f"refusing to run {engine}: the ONNX model it was built from ({sidecar.onnx}, relative to its folder) "
            "is not there to check it against"
        )
    found = file_sha256(onnx)
    if found != sidecar.onnx_sha256:
        raise BackendUnavailable(
            f"refusing to run {engine}: it was built from an ONNX model with sha256 {sidecar.onnx_sha256[:12]}…, "
            f"but {onnx} has {found[:12]}… (a stale engine of another model); rebuild it"
        )
    return onnx


def check_batch(shape: tuple[int, ...], shapes: dict[str, list[int]]) -> None:
    """Refuse an input ``shape`` outside the engine's optimization profile (``shapes``: min, opt, max).

    Raises:
        BackendUnavailable: Naming the shape and the profile's range.
    """
    low, high = shapes["min"], shapes["max"]
    if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)):
        raise BackendUnavailable(f"input shape {list(shape)} is outside the engine's profile {low} .. {high}")


def set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    """``context.set_input_shape`` with its result checked (TensorRT returns ``False``, it does not raise).

    Raises:
        BackendUnavailable: When TensorRT refuses the shape.
    """
    if not context.set_input_shape(name, shape):
        raise BackendUnavailable(f"TensorRT refused the input shape {list(shape)} for {name}")


class TensorRTRunner:
    """A deserialized engine with its execution context and CUDA stream; tensors live on its GPU."""

    def __init__(self, engine_path: Path, sidecar: Sidecar, index: int) -> None:
        require_tensorrt()
        import tensorrt as trt
        import torch

        self.torch, self.trt, self.sidecar = torch, trt, sidecar
        self.device = torch.device("cuda", index)
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise BackendUnavailable(f"TensorRT could not deserialize {engine_path}")
            self.engine = engine
            self.context = engine.create_execution_context()
            # Its own stream: copies and the engine's kernels queue there, and only it is waited on.
            self.stream = torch.cuda.Stream(device=self.device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self.output_names:
            raise BackendUnavailable(
                f"{engine_path} has inputs {inputs} and outputs {self.output_names}: expected one image input"
            )
        self.input = inputs[0]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shapes = sidecar.shapes
        self.batch = shapes["min"][0] if shapes["min"][0] == shapes["max"][0] else None
        self.max_batch = shapes["max"][0]
        self.inputs = [_meta(engine, self.input, self.dtypes)]
        self.outputs = [_meta(engine, n, self.dtypes) for n in self.output_names]
        major, minor = torch.cuda.get_device_capability(self.device)
        self.info = RunInfo(
            backend="tensorrt",
            provider=f"TensorRT {trt.__version__}",
            device=f"{self.device} {torch.cuda.get_device_name(self.device)} (sm {major}.{minor})",
            precision=sidecar.precision,
            threads=None,
        )
        self._out: dict[tuple[str, tuple[int, ...]], Any] = {}

    def place(self, x: np.ndarray) -> Any:
        """The batch on the runner's GPU, in the engine's input type, copied on the runner's stream."""
        torch = self.torch
        check_batch(tuple(x.shape), self.sidecar.shapes)
        host = torch.from_numpy(np.ascontiguousarray(x, dtype=self.dtypes[self.input]))
        with torch.cuda.stream(self.stream):
            return host.to(self.device, non_blocking=False)

    def forward(self, placed: Any) -> Any:
        """Run the engine on a placed batch; returns the first output on the GPU once it is complete."""
        with self.torch.cuda.device(self.device):  # TensorRT enqueues on the current device: the engine's
            return self._forward(placed)

    def _forward(self, placed: Any) -> Any:
        torch = self.torch
        shape = tuple(int(d) for d in placed.shape)
        check_batch(shape, self.sidecar.shapes)
        set_input_shape(self.context, self.input, shape)
        if not self.context.set_tensor_address(self.input, placed.data_ptr()):
            raise BackendUnavailable(f"TensorRT refused the address of input {self.input}")
        results = []
        for name in self.output_names:
            out_shape = dims(self.context.get_tensor_shape(name))
            key = (name, out_shape)
            if key not in self._out:
                dtype = torch.from_numpy(np.empty(0, dtype=self.dtypes[name])).dtype
                self._out[key] = torch.empty(out_shape, dtype=dtype, device=self.device)
            if not self.context.set_tensor_address(name, self._out[key].data_ptr()):
                raise BackendUnavailable(f"TensorRT refused the address of output {name}")
            results.append(self._out[key])
        # The input was copied on this stream; the engine runs after it there, and only this stream is waited on.
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendUnavailable("TensorRT failed to enqueue the engine")
        self.stream.synchronize()
        return results[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The first output as float32 on the host, whatever type the engine writes."""
        out = self.forward(self.place(x))
        return np.asarray(out.cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        """Free the output buffers, the execution context and the engine."""
        self._out.clear()
        del self.context, self.engine


def dims(shape: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (it indexes like one; -1 marks a dynamic axis)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


def _meta(engine: Any, name: str, dtypes: dict[str, np.dtype[Any]]) -> TensorMeta:
    """One of the engine's tensors as :class:`TensorMeta` (a dynamic axis, -1 in TensorRT, is ``None``)."""
    shape: list[int | str | None] = [d if d >= 0 else None for d in dims(engine.get_tensor_shape(name))]
    return TensorMeta(name=name, shape=shape, dtype=dtypes[name].name)


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> TensorRTRunner:
    """The engine at ``path`` on the CUDA device ``device``, after checking its sidecar and its origin.

    Checked in this order, each refusal naming what differs: the sidecar's precision; the ONNX model
    the engine derives from (:func:`check_origin`); TensorRT and CUDA being here; the GPU, its
    compute capability and the TensorRT version being the ones it was built for.

    Raises:
        BackendUnavailable: Without CUDA or TensorRT, or when a check fails.
    """
    sidecar = read_sidecar(path)
    if sidecar.precision != precision:
        raise BackendUnavailable(f"{path} is a {sidecar.precision} engine, not {precision}")
    check_origin(path, sidecar)
    index = cuda_index(device)
    require_tensorrt()
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"a TensorRT engine runs on a CUDA GPU; none is visible (asked for {device})")
    index = torch.cuda.current_device() if index is None else index
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(f"{device} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    major, minor = torch.cuda.get_device_capability(index)
    differences = sidecar_mismatch(sidecar, trt.__version__, torch.cuda.get_device_name(index), f"{major}.{minor}")
    if differences:
        raise BackendUnavailable(f"refusing to run {path}: " + "; ".join(differences) + "; rebuild it here")
    return TensorRTRunner(path, sidecar, index)
