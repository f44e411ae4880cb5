"""The program ``torch.distributed.run`` starts in every training process (``python -m stages.training.worker``).

It reads the launch spec the head resolved (never recomputing the run folder, model or settings), is
placed with the head's node first (``handshake.agree``), joins the process group, and trains its share.
Which checkpoint to resume from is decided here, by global rank 0, at every start: a torchrun restart
after a worker died resumes from the last complete checkpoint like a retry of the whole stage does, and
the other processes receive that checkpoint by broadcast. Only global rank 0, a process of the head
node, writes: the checkpoints and the per-epoch record in the run folder, which the head's stage then
publishes. A refusal prints ``error: [stage 'train'] ...`` and exits 2; a crash exits 1, and the
launcher reports both.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from stages.core.cli import REFUSED_EXIT, configure_logging
from stages.core.errors import PipelineError
from stages.training.spec import LaunchSpec, read_spec

log = logging.getLogger("stages.training.worker")


def main(argv: list[str] | None = None) -> int:
    """Entry point of one launched training process."""
    parser = argparse.ArgumentParser(prog="python -m stages.training.worker")
    parser.add_argument("--spec", type=Path, required=True, help="the launch spec the head resolved")
    parser.add_argument("--workspace", type=Path, required=True, help="this node's workspace root")
    parser.add_argument("--head", action="store_true", help="this node runs the stage (set by the stage only)")
    args = parser.parse_args(argv)
    configure_logging()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        _work(read_spec(args.spec), args.workspace.resolve(), head=args.head)
    except PipelineError as exc:
        if exc.stage is None:
            exc.stage = "train"
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    return 0


def _device(spec: LaunchSpec, local_rank: int) -> object:
    import torch

    from stages.training.ddp import cuda_index

    if spec.settings.backend != "nccl":
        return torch.device("cpu")
    index = cuda_index(spec.hyper.device, local_rank)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    # torchrun stops workers with SIGTERM: exit through the clean-up (temporary run folder, checkpoint copy).
    raise SystemExit(128 + signum)


def _work(spec: LaunchSpec, workspace: Path, *, head: bool) -> None:
    # Imports that touch neither Ultralytics nor the rank first: Ultralytics reads RANK once, at import.
    import torch.distributed as dist

    from stages.training import handshake
    from stages.training import spec as specs

    if spec.hyper.backend == "lightning":  # refused before joining the others
        from stages.training.lightning import require_lightning

        require_lightning()
    store, prefix = handshake.worker_store(spec.hyper.distributed.join_timeout_s)
    placement = handshake.agree(head=head, store=store, prefix=prefix, timeout_s=spec.hyper.distributed.join_timeout_s)
    os.environ["RANK"] = str(placement.rank)
    os.environ["GROUP_RANK"] = str(placement.node_rank)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log.info(
        "rank %d of %d (node %d, local rank %d, launcher restart %d)",
        placement.rank,
        placement.world_size,
        placement.node_rank,
        placement.local_rank,
        restart,
    )
    from stages.core.runtime import image_pixel_limit, import_ultralytics

    with contextlib.ExitStack() as stack:
        stack.enter_context(image_pixel_limit(spec.max_image_pixels))
        # Before the process group exists: at import Ultralytics writes its settings under a
        # distributed barrier once a group is there, which would pair with the other processes'
        # collectives below while one of them waits for the settings lock (a deadlock, seen here).
        ultralytics = import_ultralytics(workspace)
        device = _device(spec, placement.local_rank)
        # The process group is created here, before the trainer's, so the resume checkpoint can travel
        # over it; the trainer's _setup_ddp then uses this group. Its keys are this start's own.
        dist.init_process_group(
            backend=spec.settings.backend,
            store=dist.PrefixStore(f"{prefix}/process-group", store),
            timeout=timedelta(seconds=spec.settings.collective_timeout_s),
            rank=placement.rank,
            world_size=placement.world_size,
        )
        run_dir = workspace / spec.run_dir
        decision: dict[str, str | None] = {"checkpoint": None}
        if placement.rank == 0:
            found = specs.run_resume_point(run_dir, spec.fingerprint, spec.hyper)
            decision["checkpoint"] = str(found[0]) if found else None
            if found is None:
                specs.clear_checkpoints(run_dir)
            specs.record_start(run_dir, restart, found[1] if found else None)
            if found:
                log.info("resuming from %s (%d epochs done)", found[0], found[1])
        resume_from = handshake.share_checkpoint(decision, device, on_head_node=head)
        if placement.rank != 0:
            # Ultralytics creates the run folder in every process; only rank 0's may be in the workspace.
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yolo-rank-"))) / run_dir.name
        if resume_from is not None and not head:
            stack.callback(resume_from.unlink, missing_ok=True)
        fit = specs.backend_fit(spec.hyper)
        source = specs.resolve_model(spec.model, workspace, Path(ultralytics.__file__).parent)
        trainer = fit(spec.hyper, workspace / spec.data_yaml, run_dir, source, spec.settings, resume_from)
    log.info("rank %d of %d: batches per epoch %s", placement.rank, placement.world_size, trainer.batches_per_epoch)


if __name__ == "__main__":
    sys.exit(main())
