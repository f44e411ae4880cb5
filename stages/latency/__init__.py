"""Latency measurement: how ``benchmark`` times a runner, and what it makes of the times.

- ``stats``: one timed loop (:func:`~stages.latency.stats.time_calls`), the pooled percentiles
  (:func:`~stages.latency.stats.summarise`) and the rounds' stability;
- ``pinning``: the process pinned to the CPUs a row records;
- ``rounds``: a runner made ready to time (its forward pass, end to end, each batch size it takes)
  and the rounds, the backends interleaved within each;
- ``rows``: which backend opens which artifact on which device, and each row's name in
  ``metrics/deployment.json``;
- ``results``: a row and the stage's result from what the rounds measured, and the plots' data.

Imports the core, the runners (``stages.backends``) and the deploy targets' names
(``stages.deploy.targets``); never a stage entry (the layers in pyproject.toml, checked by ``make lint``).
"""
