"""Batch norm across processes, and back to plain batch norm for everything after training."""

from __future__ import annotations

from torch import nn


def convert(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm*d`` of ``model`` as ``SyncBatchNorm`` (statistics over all processes' batches)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def revert(module: nn.Module) -> nn.Module:
    """Every ``SyncBatchNorm`` of ``module`` as a plain ``BatchNorm2d`` holding the same parameters and statistics.

    The checkpoint must hold plain batch norm: evaluation, export and engine builds run in one
    process, where ``SyncBatchNorm`` has nothing to synchronise with (and ONNX has no such operator).
    """
    result = module
    if isinstance(module, nn.SyncBatchNorm):
        result = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            result.weight, result.bias = module.weight, module.bias  # the same tensors, on their device
        result.running_mean = module.running_mean
        result.running_var = module.running_var
        result.num_batches_tracked = module.num_batches_tracked
        result.training = module.training
    for name, child in module.named_children():
        result.add_module(name, revert(child))
    return result


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    """How many modules of ``kind`` ``model`` holds (exactly that type, not subclasses)."""
    return sum(type(m) is kind for m in model.modules())
