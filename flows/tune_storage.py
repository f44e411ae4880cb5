"""Where a study lives: ``tune.storage`` turned into an Optuna storage.

- ``""`` (the default): a SQLite file, ``paths.tune_studies/<study>.db``. One process uses it (the
  run holds the workspace lock), and that process talks to Optuna from its main thread only, so
  SQLite's one-writer locking is never contended, whatever ``tune.workers`` is.
- ``sqlite:///FILE``: the same, in another file (relative to the workspace unless absolute).
- ``journal:FILE``: Optuna's journal file, for several processes on one machine: every write is an
  append under a file lock (Optuna's ``JournalFileBackend``), where SQLite would answer the second
  writer "database is locked" (Optuna's own RDB docs advise against SQLite for parallel studies).
- ``postgresql+psycopg2://USER@HOST[:PORT]/DB``: one study shared by machines. The password never
  sits in ``params.yaml`` (``stages/core/config/tune.py`` refuses it); libpq reads ``PGPASSWORD`` or
  ``PGPASSFILE`` from the environment.

A shared storage (any but the default) may hold trials other runs are running right now, so a
running trial found at the start is only closed when it is this machine's and its process is gone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.errors import TuneError


class StorageSpec(BaseModel):
    """A resolved ``tune.storage``."""

    model_config = ConfigDict(frozen=True)

    kind: str  # sqlite | journal | rdb
    target: str  # the file (sqlite, journal) or the URL (rdb)
    shared: bool  # other runs may use it at the same time

    @property
    def label(self) -> str:
        """How reports and messages name it (no password can be in it: see ``storage_url_problem``)."""
        return self.target


def resolve_storage(setting: str, workspace: Path, default_file: Path) -> StorageSpec:
    """The storage ``tune.storage`` names, with relative files under ``workspace``.

    Args:
        setting: ``tune.storage`` (already validated by ``stages/core/config.py``).
        workspace: The workspace a relative file is relative to.
        default_file: The study's SQLite file when ``setting`` is empty.
    """
    if not setting:
        return StorageSpec(kind="sqlite", target=str(default_file), shared=False)
    scheme, _, rest = setting.partition(":")
    if scheme == "journal":
        return StorageSpec(kind="journal", target=str(workspace / rest), shared=True)
    if scheme == "sqlite":
        # sqlite:///rel/file is relative, sqlite:////abs/file absolute (SQLAlchemy's reading).
        return StorageSpec(kind="sqlite", target=str(workspace / rest[3:]), shared=True)
    return StorageSpec(kind="rdb", target=setting, shared=True)


def open_storage(spec: StorageSpec) -> Any:
    """The Optuna storage object for ``spec`` (files' folders created).

    Raises:
        TuneError: When the database driver is missing or the server cannot be reached or refuses
            the credentials; the message names the storage and what to do.
    """
    import optuna

    if spec.kind == "journal":
        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        # The open(O_EXCL) lock works on network file systems too, where symlink locks may not.
        backend = JournalFileBackend(spec.target, lock_obj=JournalFileOpenLock(spec.target))
        return optuna.storages.JournalStorage(backend)
    if spec.kind == "sqlite":
        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(f"sqlite:///{spec.target}")
    try:
        return _open_rdb(optuna, spec.target)
    except ImportError:  # Optuna wraps SQLAlchemy's failed import of the driver in its own ImportError
        scheme = spec.target.split(":", 1)[0]
        driver = scheme.partition("+")[2] or ("psycopg2" if scheme == "postgresql" else scheme)
        raise TuneError(
            f"the database driver {driver} for {spec.label} is not installed: install the project's "
            "dependencies (pyproject.toml pins psycopg2-binary for PostgreSQL)",
            key="tune.storage",
        ) from None
    except Exception as exc:  # SQLAlchemy's OperationalError: server down, credentials refused
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise TuneError(
            f"cannot open the study storage {spec.label}: {first[0]} (is the server up, and PGPASSWORD "
            "or PGPASSFILE set for its user?)",
            key="tune.storage",
        ) from None


# What PostgreSQL says when two processes create Optuna's schema in an empty database at once: the
# loser's CREATE TABLE / CREATE TYPE meets the winner's (measured: both messages, 3 runs of 3).
_SCHEMA_RACE = ("already exists", "duplicate key value violates unique constraint")


def _open_rdb(optuna: Any, url: str, attempts: int = 5) -> Any:
    """``RDBStorage(url)``, opened again when another process was creating the same schema at that moment.

    Machines that start one study together on a fresh database each create Optuna's tables on
    opening; all but one then fail on the tables the first made. Once those exist, opening only
    reads them, so a second try succeeds.
    """
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except ImportError:
            raise
        except Exception as exc:
            said = str(getattr(exc, "orig", None) or exc)
            if attempt == attempts - 1 or not any(marker in said for marker in _SCHEMA_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
