"""The core every stage and domain package shares: nothing here knows about detection.

- ``config``: ``params.yaml`` validated into typed models (unknown keys refused, with a did-you-mean);
- ``errors``: the typed errors, each naming the file, key or stage at fault;
- ``common``: JSON/text I/O that writes atomically, logging, the stage CLI's shared exit codes;
- ``cli``: the stage CLI's argument handling and its one error path;
- ``runtime``: the process switches set before heavy libraries load (offline, threads, safe loading);
- ``lock``: the workspace lock (``python -m stages.core.lock -- CMD``);
- ``fingerprint``: the environment a result was made in;
- ``data_version``: what DVC recorded about the data and production (its files, never the data);
  ``python -m stages.core.data_version``;
- ``recorded_outputs``: restoring a stage's outputs as DVC recorded them;
- ``verdict``: the words for a gate's verdict.

Imports nothing from ``stages`` but this package and the stage order in ``stages/__init__.py`` (the
layers in pyproject.toml, checked by ``make lint``).
"""
