"""Training at scale: the launch path, the rendezvous checks, the large-batch recipe and the trainer.

``stages/train.py`` is the stage's thin entry. What it needs lives here, one concern per module:

- ``recipe``: the learning-rate rule for a global batch, per optimizer family (pure arithmetic).
- ``launch``: one process in the stage itself, or ``torch.distributed.run`` for anything larger;
  the command every node runs (``python -m stages.train --print-launch``).
- ``handshake``: what the nodes check of each other once the launcher's rendezvous completes, and
  the rank order that makes the head node's first process global rank 0.
- ``trainer``: the one subclass of Ultralytics' detection trainer (the seam where DDP set-up, SyncBN,
  the learning-rate rule and per-epoch throughput are added).
- ``worker``: the program ``torch.distributed.run`` starts in every training process.
"""
