"""Pipeline stages. Each module ``stages.<name>`` exposes ``run(cfg) -> result`` and a CLI.

``PIPELINE`` is the stage order; ``dvc.yaml`` declares the same stages (a test keeps them in step).
"""

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
