"""Fetching pretrained weights end to end: download from a loopback HTTP server, ``dvc add`` under the
workspace lock, then ``dvc repro`` of a stage that depends on the whole ``weights/`` folder (as
``train`` does), in a tiny git + DVC workspace; and the CLI refusing a stand-in under the real pins.

Real weights cannot be fetched on the test machines: a stand-in body is served, with its own digest.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from stages.data.weights import PINNED, PinnedWeights, fetch, next_steps
from tests.conftest import REPO, venv_env
from tests.e2e.workspace import GIT_ENV, NETGUARD, Workspace

BODY = b"stand-in checkpoint bytes\n" * 4000
DIGEST = hashlib.sha256(BODY).hexdigest()


# The size of the real yolo11n.pt, all zeros: passes the size check, fails the digest.
LOOKALIKE = bytes(PINNED["yolo11n"].size)


def serving(body_for: Callable[[str], bytes]) -> type[http.server.BaseHTTPRequestHandler]:
    """A quiet handler answering GET ``path`` with ``body_for(path)``."""

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = body_for(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Serve


_Serve = serving(lambda path: LOOKALIKE if path == "/yolo11n.pt" else BODY)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Serve)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _env(tmp_path: Path) -> dict[str, str]:
    env = venv_env()
    env.update(GIT_ENV)
    env["NETGUARD_LOG"] = str(tmp_path / "netguard.log")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_fetch_dvc_add_then_repro_a_stage_depending_on_the_weights_folder(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = _env(tmp_path)
    for key in ("NETGUARD_LOG", "PYTHONPATH"):  # the dvc add fetch starts runs guarded too
        monkeypatch.setenv(key, env[key])
    assert _run(["git", "init", "-q"], ws, env).returncode == 0
    init = _run([sys.executable, "-m", "dvc", "init", "-q"], ws, env)
    assert init.returncode == 0, init.stderr
    (ws / ".gitignore").write_text("/weights/*.pt\n")  # as the project's own .gitignore
    (ws / "weights").mkdir()
    (ws / "weights" / "README.md").write_text("starting weights\n")
    # A stage reading the whole folder, like train's `${paths.weights}` dep.
    (ws / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "train": {
                        "cmd": f'{sys.executable} -c "import hashlib,pathlib; '
                        "p=pathlib.Path('weights/standin.pt'); "
                        "pathlib.Path('model.txt').write_text(hashlib.sha256(p.read_bytes()).hexdigest())\"",
                        "deps": ["weights"],
                        "outs": ["model.txt"],
                    }
                }
            }
        )
    )

    stale = ws / "weights" / ".standin.pt.k1ll3d.part"  # what a fetch killed with SIGKILL leaves
    stale.write_bytes(BODY[:100])
    table = {"standin": PinnedWeights("standin.pt", f"{server}/standin.pt", DIGEST, len(BODY))}
    result = fetch("standin", ws / "weights", ws, table=table)
    assert not stale.exists()
    assert result.downloaded
    assert result.dvc_file == ws / "weights" / "standin.pt.dvc" and result.dvc_file.is_file()
    assert DIGEST not in result.dvc_file.read_text()  # DVC's md5 is there, not ours
    ignored = _run(["git", "check-ignore", "-q", "weights/standin.pt"], ws, env)
    assert ignored.returncode == 0  # git never sees the bytes (the root .gitignore, so no weights/.gitignore)
    assert next_steps(result, ws) == [
        "git add weights/standin.pt.dvc",
        "dvc push",
        "set in params.yaml:  train.model: weights/standin.pt",
    ]

    repro = _run([sys.executable, "-m", "dvc", "repro"], ws, env)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'train'" in repro.stdout
    assert (ws / "model.txt").read_text() == DIGEST
    status = _run([sys.executable, "-m", "dvc", "status"], ws, env)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr

    # Fetching again finds the file: no download, dvc add is a no-op, the stage stays cached.
    again = fetch(
        "standin", ws / "weights", ws, table={"standin": replace(table["standin"], url="http://127.0.0.1:9/x")}
    )
    assert not again.downloaded
    repro2 = _run([sys.executable, "-m", "dvc", "repro"], ws, env)
    assert repro2.returncode == 0 and "Running stage" not in repro2.stdout, repro2.stdout + repro2.stderr
    assert not Path(env["NETGUARD_LOG"]).exists(), Path(env["NETGUARD_LOG"]).read_text()


def test_project_dvc_yaml_accepts_a_dvc_file_inside_weights(tmp_path: Path) -> None:
    """The project's own dvc.yaml: train depends on `weights/`, which now holds a .dvc-tracked file."""
    ws = Workspace.create(tmp_path / "ws", tmp_path / "prefect")
    (ws.root / "weights" / "yolo11n.pt").write_bytes(BODY)
    add = ws.run("-m", "dvc", "add", "-q", "weights/yolo11n.pt")
    assert add.returncode == 0, add.stderr
    dag = ws.run("-m", "dvc", "dag", "train")
    assert dag.returncode == 0, dag.stderr
    assert "weights/yolo11n.pt.dvc" in dag.stdout and "train" in dag.stdout
    assert ws.network_attempts() == []


def test_cli_refuses_a_stand_in_under_the_real_pins_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws", tmp_path / "prefect")
    proc = ws.run("-m", "stages.data.weights", "fetch", "yolo11n", "--url", f"{server}/yolo11n.pt", "--no-dvc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    actual = hashlib.sha256(LOOKALIKE).hexdigest()
    assert f"expected sha256 {PINNED['yolo11n'].sha256}, got {actual}" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (ws.root / "weights").iterdir()) == ["README.md"]
    assert ws.network_attempts() == []


def test_train_starts_from_fetched_weights_tracked_inside_the_weights_dep(
    server: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's own chain: an 80-class checkpoint (an untrained stand-in: real weights cannot be
    fetched here) fetched, dvc-added inside `weights/` and named by train.model; `dvc repro train` runs
    on the 3-class sample from it, and DVC then holds the stage up to date."""
    ws = Workspace.with_sample_data(tmp_path_factory, "weights-train")
    checkpoint = tmp_path / "coco80.pt"
    # In a process of its own: importing Ultralytics here would change Pillow's plugins for later tests.
    save = ws.run(
        "-c",
        "import sys; from pathlib import Path; from stages.core.runtime import import_ultralytics; "
        "import_ultralytics(Path(sys.argv[1])).YOLO('yolo11n.yaml', task='detect').save(sys.argv[2])",
        str(tmp_path),
        str(checkpoint),
    )
    assert save.returncode == 0, save.stderr[-3000:]  # nc 80, as the released COCO weights
    body = checkpoint.read_bytes()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serving(lambda _path: body))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    table = {
        "yolo11n": PinnedWeights(
            "yolo11n.pt",
            f"http://127.0.0.1:{httpd.server_address[1]}/yolo11n.pt",
            hashlib.sha256(body).hexdigest(),
            len(body),
        )
    }
    for key in ("NETGUARD_LOG", "PYTHONPATH", "PATH"):
        monkeypatch.setenv(key, ws.env[key])
    try:
        result = fetch("yolo11n", ws.root / "weights", ws.root, table=table)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.dvc_file is not None and result.dvc_file.is_file()

    ws.edit("train", model="weights/yolo11n.pt")
    proc, ran = ws.repro("train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train" in ran
    assert ws.json("reports/train.json")["model"].endswith("weights/yolo11n.pt")
    status = ws.run("-m", "dvc", "status", "train")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert ws.network_attempts() == []
