"""Where Ultralytics assumes one node and one GPU per process, the pipeline's launched processes differ.

- ``cuda_index``: a launched process trains on its *local* rank's entry of ``train.device``;
- ``cpu_ddp_wrap``: DDP for CPU modules (Ultralytics passes a GPU index CPU modules refuse);
- ``single_process_validation``: Ultralytics' validators as in one process, for rank 0's final
  validation after the other ranks have left the process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel


def cuda_index(device: str, local_rank: int) -> int:
    """The torch CUDA index of the GPU a launched process trains on: its local rank's entry of ``device``.

    Through Ultralytics' ``parse_device``, which turns physical ids under an external
    ``CUDA_VISIBLE_DEVICES`` (``device: 2,3`` with ``CUDA_VISIBLE_DEVICES=2,3``) into torch's indices.
    """
    from ultralytics.utils.torch_utils import parse_device

    return int(parse_device(device).split(",")[local_rank])


class _CpuDDP(DistributedDataParallel):
    """DDP for a CPU module: Ultralytics passes ``device_ids=[device.index]``, which is ``[None]`` on CPU."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module, device_ids=None, **kwargs)


@contextlib.contextmanager
def cpu_ddp_wrap() -> Iterator[None]:
    """Ultralytics' DDP wrap uses ``_CpuDDP`` while inside (it looks the class up in ``torch.nn.parallel``)."""
    original = torch.nn.parallel.DistributedDataParallel
    torch.nn.parallel.DistributedDataParallel = _CpuDDP
    try:
        yield
    finally:
        torch.nn.parallel.DistributedDataParallel = original


@contextlib.contextmanager
def single_process_validation() -> Iterator[None]:
    """Ultralytics' validators behave as in a single process (they read the rank as a module constant)."""
    from ultralytics.engine import validator
    from ultralytics.models.yolo.detect import val

    originals = {module: module.RANK for module in (validator, val)}
    try:
        for module in originals:
            module.RANK = -1
        yield
    finally:
        for module, rank in originals.items():
            module.RANK = rank
