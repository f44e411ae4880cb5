"""Deployable artifacts: build each target, measure its mAP like the PyTorch model's, and gate it.

``targets.py`` names the artifacts and how each is built and opened, ``int8.py`` the CPU INT8
schemes (ONNX Runtime and OpenVINO) and the CPU they are built for, ``accuracy.py`` the one mAP code
every artifact is measured with, and ``build.py`` runs them for the ``export`` stage and writes
``metrics/deploy.json`` (numbers) and ``reports/deploy.json`` (text).
"""
