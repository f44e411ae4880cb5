"""Promotion's work: what ``python -m stages.promote`` (the entry, ``stages/promote.py``) runs.

- ``outcome``: the checks' and the promotion's results (``reports/promotion.json``) and the refusal.
- ``checks``: the rules a candidate must pass, and whether production is the version its pointer records.
- ``lineage``: production lines: a candidate must detect production's classes, or start a new line.
- ``staging``: the new production folder assembled beside the old one, with its ``metadata.json``.
- ``transaction``: the journal, the swap, ``dvc add``, and finishing or undoing a promotion cut off.
- ``tags``: the git commit of the pointer, its ``production-v<N>`` tag and the model-registry tags
  (GTO's format, which ``dvc artifacts get --stage prod`` reads).

It may import the core (``stages.core``), the deploy targets (``stages.deploy.targets``, which
artifacts a production folder carries) and the prepared data.yaml's reader (``stages.data.datasets``);
never a stage entry. Its functions take the entry's configuration through the ``transaction.Site``
protocol.
"""
