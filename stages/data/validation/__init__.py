"""The checks of ``validate``, one concern per module; the stage's entry (``stages/validate.py``) runs them.

- ``problems``: the stable problem codes, their severity, one problem's record;
- ``labels``: one YOLO label file's lines (fields, class ids, box geometry, duplicate boxes);
- ``images``: every image read, hashed and decoded once, across processes, with its label file;
- ``tally``: the cross-file checks on the per-image records (duplicate images, empty splits, classes
  missing from train) and the report's counts;
- ``report``: ``reports/validate.json``'s model and the markdown summary.
"""
