"""Every inference runtime behind one small interface (:class:`~stages.backends.base.Runner`).

``evaluate``'s deploy checks, ``export`` and ``benchmark`` open artifacts only through
:func:`open_runner`; each backend lives in its own module and imports its library lazily, so a
missing optional runtime (OpenVINO, TensorRT) fails only where it is asked for, with a clear error.
"""

from stages.backends.base import BACKENDS, RunInfo, Runner, open_runner

__all__ = ["BACKENDS", "RunInfo", "Runner", "open_runner"]
