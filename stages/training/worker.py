"""The program ``torch.distributed.run`` starts in every training process (``python -m stages.training.worker``).

It reads the same ``params.yaml`` as the stage, agrees with the other nodes (``handshake``), and
trains its share. Only global rank 0, a process of the head node, writes: the checkpoints and the
per-epoch record in the run folder, which the head's stage then publishes. A refusal prints
``error: [stage 'train'] ...`` and exits 2; a crash exits 1, and the launcher reports both.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

from stages.common import REFUSED_EXIT, configure_logging
from stages.config import load_params
from stages.errors import PipelineError

log = logging.getLogger("stages.training.worker")


def main(argv: list[str] | None = None) -> int:
    """Entry point of one launched training process."""
    parser = argparse.ArgumentParser(prog="python -m stages.training.worker")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--head", action="store_true", help="this node runs the stage (set by the stage only)")
    parser.add_argument("--resume", action="store_true", help="the head resumes its run (set by the stage only)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        _work(args.params, head=args.head, resume=args.resume)
    except PipelineError as exc:
        if exc.stage is None:
            exc.stage = "train"
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    return 0


def _work(params_file: Path, *, head: bool, resume: bool) -> None:
    # Imports that touch neither Ultralytics nor the rank first: Ultralytics reads RANK once, at import.
    from stages.train import TrainConfig, prepared_data_hash, run_fingerprint, trainer_settings
    from stages.training import handshake

    root = params_file.resolve().parent
    cfg = TrainConfig.from_params(load_params(params_file), root)
    run_dir = cfg.runs / run_fingerprint(cfg)[:16]
    checkpoint = run_dir / "weights" / "last.pt" if head and resume else None
    own = handshake.own_record(
        head=head, identity=cfg.hyper.training_identity(), data=prepared_data_hash(cfg), resume=resume
    )
    placement = handshake.agree(own, checkpoint, cfg.hyper.distributed.timeout_s)
    os.environ["RANK"] = str(placement.rank)
    os.environ["GROUP_RANK"] = str(placement.node_rank)
    log.info(
        "rank %d of %d (node %d, local rank %s)",
        placement.rank,
        placement.world_size,
        placement.node_rank,
        os.environ["LOCAL_RANK"],
    )

    from stages.runtime import image_pixel_limit, import_ultralytics
    from stages.train import resolve_model

    with contextlib.ExitStack() as stack:
        if placement.rank != 0:
            # Ultralytics creates the run folder in every process; only rank 0's may be in the workspace.
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yolo-rank-"))) / run_dir.name
        if placement.resume_from is not None and not head:
            stack.callback(placement.resume_from.unlink, missing_ok=True)
        stack.enter_context(image_pixel_limit(cfg.max_image_pixels))
        ultralytics = import_ultralytics(root)
        from stages.training.trainer import fit

        source = resolve_model(cfg.hyper.model, root, Path(ultralytics.__file__).parent)
        trainer = fit(cfg.hyper, cfg.data_yaml, run_dir, source, trainer_settings(cfg), placement.resume_from)
    log.info("rank %d of %d: batches per epoch %s", placement.rank, placement.world_size, trainer.batches_per_epoch)


if __name__ == "__main__":
    sys.exit(main())
