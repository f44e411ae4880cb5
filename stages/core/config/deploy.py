"""The ``deploy`` section (``stages/export.py``, ``stages/deploy/``): the deployable artifacts and their gates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.core.config.base import _Section


class Int8Params(_Section):
    """CPU INT8: ONNX Runtime static Q/DQ and OpenVINO NNCF quantization (``stages/deploy/int8.py``)."""

    calibration_images: int = Field(
        64, ge=1, description="train images (never val) the activation ranges come from, drawn at random"
    )
    calibration_seed: int = Field(0, ge=0, description="seed of the random draw of those train images")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    target_cpu: Literal["auto", "vnni", "no-vnni"] = Field(
        "auto",
        description="the CPU the INT8 artifacts run on: vnni (x86 VNNI/AMX, ARM dot product: 8-bit weights), "
        "no-vnni (x86 AVX2/AVX-512 without VNNI, whose 16-bit pair sums saturate: 7-bit weights); "
        "auto: this machine's CPU flags",
    )


class MaxDropParams(_Section):
    """Largest mAP50-95 drop against the PyTorch model (a fraction: 0.004 is 0.4 points) per precision."""

    fp32: float = Field(0.002, ge=0.0, le=1.0)
    fp16: float = Field(0.005, ge=0.0, le=1.0)
    int8: float = Field(0.01, ge=0.0, le=1.0)


DeployTarget = Literal["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "torchscript-fp32"]


class DeployParams(_Section):
    """Which deployable artifacts ``export`` builds, and the accuracy each must keep to be deployable."""

    targets: list[DeployTarget] = Field(default_factory=lambda: ["onnx-fp32", "onnx-int8"])
    max_drop: MaxDropParams = Field(default_factory=MaxDropParams)
    int8: Int8Params = Field(default_factory=Int8Params)
    eval_images: int = Field(0, ge=0, description="validation images each artifact's mAP is measured on; 0 = all")
    reference_tolerance: float = Field(
        0.0005,
        ge=0.0,
        le=1.0,
        description="largest |PyTorch reference - Ultralytics' validator| mAP50-95 (square letterbox, same images) "
        "before the gate refuses to measure anything against the reference",
    )

    @field_validator("targets")
    @classmethod
    def _onnx_first(cls, value: list[str]) -> list[str]:
        # Every other artifact is built from, or checked against, the FP32 ONNX model.
        if "onnx-fp32" not in value:
            raise ValueError("must include onnx-fp32 (the other artifacts are built from it)")
        if len(set(value)) != len(value):
            raise ValueError("lists a target twice")
        return value
