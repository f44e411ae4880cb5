"""The Lightning training backend (``train.backend: lightning``): Lightning runs the loop, Ultralytics the rest.

The detector, its loss, its data pipeline (mosaic and its closing), its optimizer parameter groups, its
validator (mAP by the same code) and its checkpoint format stay Ultralytics'. What Lightning brings is
the loop: the strategy (``ddp``; not ``fsdp``, see ``module``), precision plugins,
callbacks (the learning-rate monitor), loggers (CSV, in the run folder), and reading its rank from
torchrun's environment.

- ``toolbox``: Ultralytics' trainer (the pipeline's ``PipelineTrainer``) built as a toolbox whose
  methods the loop calls (model, datasets, optimizer, validator, ``save_model``, ``save_metrics``,
  ``final_eval``) and whose ``train()`` never runs.
- ``schedule``: the arithmetic (accumulation, the loss Lightning is given, warmup, the epoch's rate).
- ``module``: the ``LightningModule``: Ultralytics' loss scaled as Ultralytics scales it, warmup and the
  per-epoch schedule, the EMA of the weights, validation and the run folder's per-epoch record.
- ``data``: the ``LightningDataModule`` over Ultralytics' training dataset.
- ``checkpoint``: Lightning's ``last.ckpt`` written whole, and the epochs it holds (the resume point).
- ``fit``: the ``lightning.Trainer`` and one training run, fresh or resumed.

``lightning`` is an optional dependency (the ``lightning`` extra): nothing here imports it at module
level except ``module``, ``data`` and ``fit``, which only ``require_lightning``'s callers import.
"""

from __future__ import annotations

from stages.core.errors import ConfigError

REQUIRED_MAJOR = 2  # the Lightning 2 API (lightning.pytorch) this backend is written against


def require_lightning() -> str:
    """The installed Lightning version, checked before any training starts.

    Returns:
        ``lightning.__version__``.

    Raises:
        ConfigError: Naming ``train.backend`` when Lightning is not installed (or not a 2.x release).
    """
    try:
        import lightning
    except ImportError as exc:
        raise ConfigError(
            f"train.backend is 'lightning' but Lightning cannot be imported here ({exc}); install it with "
            "pip install 'yolo-pipeline[lightning]' or set train.backend: ultralytics",
            key="train.backend",
        ) from None
    version = str(getattr(lightning, "__version__", "0"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) != REQUIRED_MAJOR:
        raise ConfigError(
            f"train.backend is 'lightning' but Lightning {version} is installed; this backend needs Lightning "
            f"{REQUIRED_MAJOR}.x: pip install 'yolo-pipeline[lightning]'",
            key="train.backend",
        )
    return version
