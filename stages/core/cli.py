"""What every stage's command line shares and can have without importing pydantic or the params
models: the exit code of a refusal and the logging set-up (the cheap ``environment`` check runs on
every ``dvc repro`` and uses only these)."""

from __future__ import annotations

import logging

# Exit code of a stage that refused to do its job on purpose (bad config or data, failed gate): a
# retry cannot help. A crash exits 1 (Python's code for an uncaught exception) or by a signal.
REFUSED_EXIT = 2


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr with a compact format; called by CLIs only, never at import."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
