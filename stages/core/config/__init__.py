"""Typed configuration: ``params.yaml`` parsed once into frozen pydantic models.

One module per section of ``params.yaml``, named after it (``paths``, ``prepare``, ``validate``,
``train``, ``evaluate``, ``export``, ``deploy``, ``engine``, ``benchmark``, ``report``, ``promote``,
``orchestration``, ``tune``), each holding that section's model and the checks within it; ``root``
composes them into ``Params`` and reads the file; ``base`` holds what several sections share. The
sections stay here, in the core, rather than beside the code that reads them, so that the core imports
no domain package and every stage can load the whole file. This module re-exports the names other
modules import, so ``from stages.core.config import X`` works wherever ``X`` is defined.
"""

from stages.core.config.base import KeyedValueError, relative_inside_workspace
from stages.core.config.benchmark import BenchmarkParams
from stages.core.config.deploy import DeployParams, DeployTarget, Int8Params, MaxDropParams
from stages.core.config.engine import EngineParams
from stages.core.config.evaluate import EvaluateParams, check_class_floors
from stages.core.config.export import ExportParams
from stages.core.config.orchestration import OrchestrationParams
from stages.core.config.paths import INPUT_KEYS, RESERVED, PathsParams
from stages.core.config.prepare import PrepareParams
from stages.core.config.promote import PromoteParams
from stages.core.config.report import ReportParams
from stages.core.config.root import (
    DEFAULT_PARAMS,
    INTERPOLATION,
    PIPELINE_SECTIONS,
    Params,
    get_dotted,
    load_params,
    parse_params,
    set_dotted,
)
from stages.core.config.train import LAUNCH_ONLY_KEYS, DistributedParams, TrainParams, normalize_device
from stages.core.config.tune import SearchDim, TuneMetricParams, TuneParams
from stages.core.config.validate import ValidateParams
from stages.core.errors import ConfigError

__all__ = [
    "DEFAULT_PARAMS",
    "INPUT_KEYS",
    "INTERPOLATION",
    "LAUNCH_ONLY_KEYS",
    "PIPELINE_SECTIONS",
    "RESERVED",
    "BenchmarkParams",
    "ConfigError",
    "DeployParams",
    "DeployTarget",
    "DistributedParams",
    "EngineParams",
    "EvaluateParams",
    "ExportParams",
    "Int8Params",
    "KeyedValueError",
    "MaxDropParams",
    "OrchestrationParams",
    "Params",
    "PathsParams",
    "PrepareParams",
    "PromoteParams",
    "ReportParams",
    "SearchDim",
    "TrainParams",
    "TuneMetricParams",
    "TuneParams",
    "ValidateParams",
    "check_class_floors",
    "get_dotted",
    "load_params",
    "normalize_device",
    "parse_params",
    "relative_inside_workspace",
    "set_dotted",
]
