"""The data domain: what makes, reads and checks a dataset (today: the generated sample dataset,
``python -m stages.data.sample_data``).

Imports the core only (configuration, errors, I/O helpers); never a stage entry (the layers in
pyproject.toml, checked by ``make lint``).
"""
