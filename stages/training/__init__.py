"""Training at scale: the run's description, the job, the node checks, the large-batch recipe and the trainer.

``stages/train.py`` is the stage's thin entry (config, result, CLI, the order of the work). What it needs lives here,
one concern per module; none of them imports a stage entry:

- ``spec``: the run's description the head resolves once (run folder, fingerprint, model, trainer
  settings, the head's node facts) and launched processes read; the resume point.
- ``site``: where a multi-node job runs (endpoint, node rank, node count), from the launcher's
  environment or flags, never from params.
- ``job``: ``python -m stages.training.job`` on every node; the head runs ``dvc repro train`` and tells
  the other nodes what happened through its store.
- ``facts``: what a node really has (code, package versions, data on disk), compared with the head's.
- ``launch``: ``torch.distributed.run`` for one attempt: standalone on one node, the job's store for several.
- ``handshake``: the rank order that makes the head node's first process global rank 0; the resume
  checkpoint's broadcast.
- ``recipe``: the learning-rate rule for images per optimizer step, per optimizer family (pure arithmetic).
- ``trainer``: the one subclass of Ultralytics' detection trainer (the seam where DDP set-up, SyncBN,
  the learning-rate rule, whole checkpoints, the final validation and per-epoch throughput are added).
- ``checkpoints``: checkpoints written beside their namesakes, flushed, then each put in place whole.
- ``ddp``: where Ultralytics assumes one node and one GPU per process (CPU DDP, a local rank's GPU,
  rank 0 validating alone).
- ``worker``: the program ``torch.distributed.run`` starts in every training process.
- ``outputs``: a finished run folder made into the stage's outputs (model, run record, curves, the
  learning-rate curves) and the numbers of the training summary.
- ``lightning``: the Lightning backend (``train.backend: lightning``): Lightning runs the loop around
  Ultralytics' detector, loss, data, validator and checkpoint format, the trainer above as its toolbox.
- ``full_disk``: a failure for want of space said first: the file not written, the space left, what to do.
"""
