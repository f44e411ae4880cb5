"""Pipeline stages. Each module ``stages.<name>`` exposes ``run(cfg) -> result`` and a CLI.

``PIPELINE`` is the stage order; ``dvc.yaml`` declares the same stages (a test keeps them in step).
"""

import os

# ONNX Runtime (1.31 on Linux) sends usage telemetry from a native thread to
# mobile.events.data.microsoft.com once a session has lived some seconds: the DNS lookups a
# system-call trace of `dvc repro` caught around export and benchmark. Every stage, and any
# process that imports this package, switches it off before ONNX Runtime is loaded; a value the
# user set is kept. (stages/core/runtime.py sets it again for processes started from the stages.)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

PIPELINE: tuple[str, ...] = (
    "environment",
    "prepare",
    "validate",
    "train",
    "evaluate",
    "export",
    "build_engine",
    "benchmark",
    "report",
)
