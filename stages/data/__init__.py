"""The data domain: what reads, makes and checks a dataset, and the other input a run starts from.

- ``formats``: the readers of YOLO, Pascal VOC and COCO folders ``prepare`` accepts;
- ``datasets``: the prepared dataset's layout (``data.yaml``, splits, images), resolved safely;
- ``prepared_output``: ``paths.prepared`` as the only place ``prepare`` writes, and the hash split;
- ``sample_data``: the generated sample dataset (``python -m stages.data.sample_data``);
- ``validation``: the checks ``validate`` runs (problem codes, label lines, every image read and
  decoded once across processes, the cross-file checks, the report and its summary);
- ``sample_defaults``: the params made for the sample that are still in place on other data;
- ``weights``: pretrained weights fetched once, explicitly, pinned by URL and SHA-256
  (``python -m stages.data.weights fetch yolo11n``); no stage imports it and no stage's dvc.yaml
  deps cover it, so editing it retrains nothing.

Imports the core only (configuration, errors, I/O helpers); never a stage entry (the layers in
pyproject.toml, checked by ``make lint``).
"""
