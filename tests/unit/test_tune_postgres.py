"""One Optuna study shared through PostgreSQL, as machines share it: ``tune.storage:
postgresql+psycopg2://USER@HOST:PORT/DB`` with the password in ``PGPASSWORD``, never in params.

A real PostgreSQL server on loopback (``tests/servers/postgres.py``, skipped without Debian's
``postgresql``); two processes, each running the study loop with two workers and a stand-in for the
trials, stand for two machines: every trial number is handed out once across both, and the study
holds every trial either ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from tests.servers import postgres

pytestmark = pytest.mark.skipif(postgres.skip_reason() is not None, reason=postgres.skip_reason() or "")

# One "machine": the study loop over the shared storage with a stand-in for `dvc exp run`.
MACHINE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from flows.tuning import TrialOutcome, TuneConfig, run_study
    from stages.core.config import parse_params

    storage, workspace, trials = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    space = {"train.lr0": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}
    params = parse_params({"tune": {"study": "fleet", "space": space, "storage": storage}})
    cfg = TuneConfig.from_params(params, workspace)

    def trial(plan):
        time.sleep(0.3)
        return TrialOutcome(state="complete", value=plan.values["train.lr0"], seconds=0.3)

    result = run_study(cfg, trials, trial, workers=2)
    print(json.dumps(sorted(result.ran)))
    """
)


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Postgres]:
    with postgres.postgres_server(user="tuner", database="optuna") as pg:
        yield pg


def test_a_url_with_the_password_is_refused_and_the_environment_gives_it(server: postgres.Postgres, tmp_path: Path):
    from stages.core.config import parse_params
    from stages.core.errors import ConfigError

    with pytest.raises(ConfigError, match="holds a password"):
        parse_params({"tune": {"storage": server.url("postgresql+psycopg2")}})
    # Without PGPASSWORD the server refuses the role, and the error says where the password goes.
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    proc = _machine(server, tmp_path / "a", 1, env=env)
    assert proc.returncode != 0
    assert "PGPASSWORD" in proc.stderr and server.password not in proc.stderr + proc.stdout


def test_two_machines_share_one_study_each_trial_number_once(server: postgres.Postgres, tmp_path: Path):
    env = {**os.environ, "PGPASSWORD": server.password}
    # Both start together: each asks the shared study for trials until it holds 6.
    procs = [_start(server, tmp_path / name, 6, env) for name in ("machine-a", "machine-b")]
    ran: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        ran += json.loads(out.strip().splitlines()[-1])
    assert sorted(ran) == sorted(set(ran)), f"a trial number was run twice: {ran}"
    study = optuna.load_study(study_name="fleet", storage=_storage(server))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == sorted(ran)
    assert len(complete) >= 6, "the study holds at least the trials asked for"
    assert server.password not in json.dumps([t.user_attrs for t in study.trials])


def _url(server: postgres.Postgres) -> str:
    return f"postgresql+psycopg2://{server.user}@{server.host}:{server.port}/{server.database}"


def _storage(server: postgres.Postgres) -> str:
    return server.url("postgresql+psycopg2")


def _start(server: postgres.Postgres, workspace: Path, trials: int, env: dict[str, str]) -> subprocess.Popen[str]:
    workspace.mkdir(parents=True)
    return subprocess.Popen(
        [sys.executable, "-c", MACHINE, _url(server), str(workspace), str(trials)],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _machine(
    server: postgres.Postgres, workspace: Path, trials: int, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    proc = _start(server, workspace, trials, env)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
