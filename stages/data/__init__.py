"""The data domain: what reads, makes and checks a dataset.

- ``formats``: the readers of YOLO, Pascal VOC and COCO folders ``prepare`` accepts;
- ``datasets``: the prepared dataset's layout (``data.yaml``, splits, images), resolved safely;
- ``sample_data``: the generated sample dataset (``python -m stages.data.sample_data``);
- ``validation``: the checks ``validate`` runs (problem codes, label lines, every image read and
  decoded once across processes, the cross-file checks, the report and its summary).

Imports the core only (configuration, errors, I/O helpers); never a stage entry (the layers in
pyproject.toml, checked by ``make lint``).
"""
