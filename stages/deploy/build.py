"""Build every deploy target, measure its mAP the way the PyTorch model's is measured, and gate it.

The PyTorch model's mAP, the reference every drop is taken from, is first checked against
Ultralytics' own validator on the same images with the same square letterbox (``evaluate``'s
``square`` figure, or measured here on a subset): more than ``deploy.reference_tolerance`` apart
and the stage fails naming both numbers, since a reference that misreads the model's outputs
would agree with artifacts that misread them the same way.
An artifact whose mAP50-95 falls below the reference by more than ``deploy.max_drop`` for its
precision, or whose build or check fails, is marked not deployable with the reason; the others go
on. Only deployable artifacts stay in the deploy folder (and only they are ever promoted).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends import open_runner
from stages.backends.base import predict_all
from stages.backends.inference import load_inputs, onnx_input_batch
from stages.core.common import read_json, write_json
from stages.core.config import DeployParams
from stages.core.errors import PipelineError
from stages.core.fingerprint import cpu_flags, cpu_model
from stages.deploy.accuracy import (
    Accuracy,
    Calibration,
    LabelledImages,
    calibration_inputs,
    calibration_sample,
    check_reference,
    detection_map,
    labelled_split,
    ultralytics_map,
)
from stages.deploy.int8 import Int8Cpu, check_scores, int8_cpu, quantize, quantize_openvino
from stages.deploy.targets import TARGETS, Target

log = logging.getLogger(__name__)

SCORE_CHECK_IMAGES = 16  # validation images the INT8 scores are compared with FP32's on


class DeployInputs(BaseModel):
    """What building and gating the artifacts reads and writes."""

    model_config = ConfigDict(frozen=True)

    model: Path  # the PyTorch checkpoint: the reference every drop is taken from
    deploy_dir: Path  # holds model.onnx (FP32, parity checked) on entry
    data_yaml: Path
    metrics: Path
    report: Path
    workspace: Path
    imgsz: int
    conf: float
    iou: float
    options: DeployParams
    evaluate_metrics: Path | None = None  # metrics/evaluate.json: Ultralytics' square-batch figure of the val split
    evaluate_device: str = "cpu"  # where evaluate measured it (train.device)


class ArtifactMetrics(BaseModel):
    """One artifact's numbers in ``metrics/deploy.json`` (``map*`` absent when it could not be built)."""

    deployable: int
    map50: float | None = None
    map50_95: float | None = None
    drop_map50_95: float | None = None
    max_drop: float
    size_mb: float | None = None
    build_seconds: float | None = None
    integer_conv_share: float | None = None  # INT8: convolutions ONNX Runtime runs as integer ops


class ArtifactFacts(BaseModel):
    """One artifact's text in ``reports/deploy.json``."""

    file: str | None
    backend: str
    precision: str
    provider: str | None = None
    scheme: str | None = None
    int8_cpu: Int8Cpu | None = None  # INT8: the CPU it was built for, how that was chosen, this machine's flags
    calibration: Calibration | None = None  # INT8: the train images its activation ranges come from
    deployable: bool
    reason: str


class DeployResult(BaseModel):
    """Every target's numbers and facts, the reference mAP they are compared with and Ultralytics' figure for it."""

    reference: Accuracy
    ultralytics: Accuracy
    metrics: dict[str, ArtifactMetrics]
    facts: dict[str, ArtifactFacts]

    @property
    def deployable(self) -> list[str]:
        return [name for name, m in self.metrics.items() if m.deployable]


class _Built(BaseModel):
    scheme: str | None = None
    integer_conv_share: float | None = None
    int8_cpu: Int8Cpu | None = None
    calibration: Calibration | None = None


class _Builder:
    """Builds the deploy targets of one export.

    The calibration images, and the FP32 model's outputs that INT8 scores are checked against, are
    computed once for all INT8 targets; the score probe is the first images of the val split
    already read for the mAP. ``int8_cpu`` is the CPU every INT8 target is built for
    (``deploy.int8.target_cpu``; ``auto``: this machine's flags).
    """

    def __init__(self, cfg: DeployInputs, val: LabelledImages, int8: Int8Cpu) -> None:
        self.cfg = cfg
        self.onnx = cfg.deploy_dir / TARGETS["onnx-fp32"].file
        self.val = val
        self.int8_cpu = int8
        self._calibration: np.ndarray | None = None
        self._probe: tuple[np.ndarray, np.ndarray] | None = None

    def calibration(self) -> np.ndarray:
        if self._calibration is None:
            int8 = self.cfg.options.int8
            self._calibration = calibration_inputs(
                self.cfg.data_yaml, int8.calibration_images, self.cfg.imgsz, seed=int8.calibration_seed
            )
        return self._calibration

    def calibration_facts(self) -> Calibration:
        """Which train images :meth:`calibration` letterboxed (the same seeded draw)."""
        int8 = self.cfg.options.int8
        return calibration_sample(self.cfg.data_yaml, int8.calibration_images, int8.calibration_seed)[1]

    def check_scores(self, backend: str, path: Path) -> None:
        """Refuse an INT8 model whose scores collapsed against the FP32 ONNX model's (``int8.check_scores``)."""
        cfg = self.cfg
        if self._probe is None:
            probe = load_inputs(self.val.paths[:SCORE_CHECK_IMAGES], cfg.imgsz)
            self._probe = probe, predict_all(open_runner("onnxruntime", self.onnx, workspace=cfg.workspace), probe)
        probe, reference = self._probe
        quantized = open_runner(backend, path, workspace=cfg.workspace, precision="int8")
        check_scores(reference, predict_all(quantized, probe))

    def build(self, target: Target, path: Path) -> _Built:
        """Write ``path`` for ``target`` (``onnx-fp32`` is the export's own file)."""
        cfg = self.cfg
        method = cfg.options.int8.calibration_method
        if target.name == "onnx-fp32":
            return _Built()
        if target.name == "onnx-int8":
            build = quantize(self.onnx, path, self.calibration(), method, reduce_range=self.int8_cpu.reduce_range)
            self.check_scores("onnxruntime", path)
            log.info(
                "INT8 for %s CPUs (%s, %s calibration on %d train images): %d of %d convolutions run as integer ops",
                self.int8_cpu.target,
                build.scheme,
                build.method,
                build.calibration_images,
                build.integer_convs,
                build.convs,
            )
            return _Built(
                scheme=f"{build.scheme}, {build.method} calibration",
                integer_conv_share=build.integer_conv_share,
                int8_cpu=self.int8_cpu,
                calibration=self.calibration_facts(),
            )
        if target.name == "openvino-fp32":
            from stages.backends.openvino_rt import convert

            convert(self.onnx, path)
            return _Built(scheme="OpenVINO IR, FP32 weights, inference precision pinned to f32")
        if target.name == "openvino-int8":
            scheme = quantize_openvino(self.onnx, path, self.calibration(), method, self.int8_cpu.overflow_fix)
            self.check_scores("openvino", path)
            return _Built(scheme=scheme, int8_cpu=self.int8_cpu, calibration=self.calibration_facts())
        if target.name == "torchscript-fp32":
            import torch

            from stages.backends.inference import torch_model
            from stages.backends.torchscript import trace

            batch = onnx_input_batch(self.onnx) or 1
            module = torch_model(cfg.model, cfg.workspace, "cpu").fuse(verbose=False)
            trace(module, torch.zeros(batch, 3, cfg.imgsz, cfg.imgsz), path)
            return _Built(scheme="torch.jit.trace of the fused model")
        raise PipelineError(f"no builder for deploy target {target.name!r}", key="deploy.targets")


def judge(reference: float, measured: float, limit: float, precision: str) -> tuple[float, bool, str]:
    """The gate of one artifact: its mAP50-95 drop against the reference, whether that is within
    ``limit`` (``deploy.max_drop`` for its ``precision``), and the reason as ``reports/deploy.json`` says it.
    """
    drop = round(reference - measured, 6)
    deployable = drop <= limit
    reason = (
        f"mAP50-95 {measured:.4f} against PyTorch's {reference:.4f}: a drop of {drop * 100:.2f} points, "
        f"{'within' if deployable else 'beyond'} the {precision} limit of {limit * 100:.2f}"
    )
    return drop, deployable, reason


def ultralytics_figure(cfg: DeployInputs, data: LabelledImages) -> tuple[Accuracy, str]:
    """Ultralytics' square-batch mAP of the PyTorch model on the gate's images, and where it comes from.

    When the gate measures the whole val split and ``evaluate`` ran on the CPU, as the gate does, that
    is the ``square`` figure ``evaluate`` recorded in ``metrics/evaluate.json``. Otherwise (fewer images,
    ``deploy.eval_images``; evaluated on a GPU, whose convolutions round differently, TF32 included;
    no such figure) Ultralytics' validator measures it here on the CPU on exactly the gate's images
    (:func:`ultralytics_map`).
    """
    # Fewer images than asked for: the split ran out, so it is the whole split. As many: maybe a subset.
    whole_split = cfg.options.eval_images == 0 or len(data.paths) < cfg.options.eval_images
    on_cpu = str(cfg.evaluate_device).strip().lower() == "cpu"
    if whole_split and on_cpu and cfg.evaluate_metrics is not None and cfg.evaluate_metrics.is_file():
        square = read_json(cfg.evaluate_metrics).get("square")
        if square:
            recorded = Accuracy(
                map50=round(square["map50"], 6),
                map50_95=round(square["map50_95"], 6),
                images=len(data.paths),
                instances=square["instances"],
            )
            return recorded, f"the whole val split, as evaluate recorded it in {cfg.evaluate_metrics.name}"
    measured = ultralytics_map(cfg.model, data, cfg.imgsz, cfg.conf, cfg.iou, cfg.workspace)
    return measured, f"measured here on the gate's {len(data.paths)} val images"


def build_and_gate(cfg: DeployInputs) -> DeployResult:
    """Build each of ``deploy.targets``, measure and gate it, and write the metrics and report.

    Raises:
        PipelineError: When the reference (the PyTorch model) cannot be measured, or Ultralytics'
            validator does not reproduce it within ``deploy.reference_tolerance`` (both numbers named).
    """
    data = labelled_split(cfg.data_yaml, "val", cfg.options.eval_images)
    reference = detection_map(
        open_runner("pytorch", cfg.model, workspace=cfg.workspace), data, cfg.imgsz, cfg.conf, cfg.iou
    )
    log.info(
        "PyTorch reference on %d val images: mAP50 %.4f, mAP50-95 %.4f",
        len(data.paths),
        reference.map50,
        reference.map50_95,
    )
    ultralytics, source = ultralytics_figure(cfg, data)
    log.info("reference checked: %s", check_reference(reference, ultralytics, cfg.options.reference_tolerance, source))
    metrics: dict[str, ArtifactMetrics] = {}
    facts: dict[str, ArtifactFacts] = {}
    flags = cpu_flags()
    int8 = int8_cpu(cfg.options.int8.target_cpu, flags, cpu_model())
    if any(TARGETS[name].precision == "int8" for name in cfg.options.targets):
        log.info(
            "INT8 built for %s CPUs (%s; this machine's INT8 flags: %s)",
            int8.target,
            int8.chosen_by,
            ", ".join(int8.machine_int8_flags) or "none",
        )
    builder = _Builder(cfg, data, int8)
    for name in cfg.options.targets:
        target = TARGETS[name]
        limit = getattr(cfg.options.max_drop, target.precision)
        path = cfg.deploy_dir / target.file
        started = time.perf_counter()
        try:
            built = builder.build(target, path)
            seconds = round(time.perf_counter() - started, 2)
            runner = open_runner(target.backend, path, workspace=cfg.workspace, precision=target.precision)
            accuracy = detection_map(runner, data, cfg.imgsz, cfg.conf, cfg.iou)
        except PipelineError as exc:
            if name != "onnx-fp32":  # the export's own file stays for the stages that measure it
                target.remove(cfg.deploy_dir)
            log.error("%s is not deployable: %s", name, exc)
            metrics[name] = ArtifactMetrics(deployable=0, max_drop=limit)
            facts[name] = ArtifactFacts(
                file=None,
                backend=target.backend,
                precision=target.precision,
                int8_cpu=int8 if target.precision == "int8" else None,
                calibration=builder.calibration_facts() if target.precision == "int8" else None,
                deployable=False,
                reason=str(exc),
            )
            continue
        drop, deployable, reason = judge(reference.map50_95, accuracy.map50_95, limit, target.precision)
        metrics[name] = ArtifactMetrics(
            deployable=int(deployable),
            map50=accuracy.map50,
            map50_95=accuracy.map50_95,
            drop_map50_95=drop,
            max_drop=limit,
            size_mb=target.size_mb(cfg.deploy_dir),
            build_seconds=seconds,
            integer_conv_share=None if built.integer_conv_share is None else round(built.integer_conv_share, 4),
        )
        facts[name] = ArtifactFacts(
            file=path.relative_to(cfg.workspace).as_posix() if path.is_relative_to(cfg.workspace) else str(path),
            backend=target.backend,
            precision=runner.info.precision,
            provider=runner.info.provider,
            scheme=built.scheme,
            int8_cpu=built.int8_cpu,
            calibration=built.calibration,
            deployable=deployable,
            reason=reason,
        )
        if deployable:
            log.info("%s deployable: %s", name, reason)
        else:
            log.error("%s NOT deployable: %s", name, reason)
        if not deployable and name != "onnx-fp32":
            target.remove(cfg.deploy_dir)  # never shipped; onnx-fp32 stays for the stages that measure it
    result = DeployResult(reference=reference, ultralytics=ultralytics, metrics=metrics, facts=facts)
    pytorch = reference.model_dump(include={"map50", "map50_95"}) | {
        "ultralytics_map50": ultralytics.map50,
        "ultralytics_map50_95": ultralytics.map50_95,
    }
    write_json(
        cfg.metrics, {"pytorch": pytorch} | {name: m.model_dump(exclude_none=True) for name, m in metrics.items()}
    )
    write_json(cfg.report, {name: f.model_dump() for name, f in facts.items()})
    return result
