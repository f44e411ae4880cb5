"""The pretrained-weights command (stages/data/weights.py) against an HTTP server on loopback.

Real weights cannot be fetched on the test machines (no network): a stand-in body and its digest are
served instead, with the pinned table swapped for one naming them.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from stages.core.errors import WeightsError, WeightsHashMismatch
from stages.data import weights
from stages.data.weights import PINNED, PinnedWeights, check_url, fetch

REPO = Path(__file__).resolve().parents[2]
BODY = bytes(range(256)) * 4096 + b"stand-in weights"  # ~1 MiB: several chunks
DIGEST = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/ok.pt`` the body, ``/short.pt`` half of it under the full Content-Length, ``/moved.pt`` a redirect
    to plain HTTP elsewhere; anything else 404. Counts requests."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path == "/ok.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/short.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.close_connection = True
        elif self.path == "/moved.pt":
            self.send_response(302)
            self.send_header("Location", "http://example.com/ok.pt")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """Base URL of a loopback HTTP server in a thread."""
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _table(url: str, digest: str = DIGEST, size: int = len(BODY)) -> dict[str, PinnedWeights]:
    return {"standin": PinnedWeights("standin.pt", url, digest, size)}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pinned_table_is_https_release_assets_with_full_digests() -> None:
    assert "yolo11n" in PINNED
    for name, pinned in PINNED.items():
        assert pinned.file == f"{name}.pt"
        assert pinned.url == f"https://github.com/ultralytics/assets/releases/download/v8.3.0/{pinned.file}"
        assert re.fullmatch(r"[0-9a-f]{64}", pinned.sha256), name
        assert pinned.size > 1_000_000, name
    assert len({p.sha256 for p in PINNED.values()}) == len(PINNED)  # no digest copied onto two models


def test_fetch_downloads_verifies_and_names_the_file(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    result = fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/ok.pt"))
    assert result.downloaded and result.path == out / "standin.pt"
    assert (out / "standin.pt").read_bytes() == BODY
    assert _leftovers(out) == ["standin.pt"]  # no temporary file left behind


def test_hash_mismatch_is_refused_naming_both_digests_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    wrong = "0" * 64
    with pytest.raises(WeightsHashMismatch) as info:
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/ok.pt", digest=wrong))
    assert info.value.expected == wrong and info.value.actual == DIGEST
    assert wrong in str(info.value) and DIGEST in str(info.value)
    assert _leftovers(out) == []


def test_truncated_body_is_refused_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"truncated"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/short.pt"))
    assert _leftovers(out) == []


def test_http_404_is_refused(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"HTTP 404"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/missing.pt"))
    assert _leftovers(out) == []


def test_unreachable_host_is_refused(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: the connection is refused
    out = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"cannot reach"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"http://127.0.0.1:{port}/ok.pt"))
    assert _leftovers(out) == []


def test_body_larger_than_pinned_size_is_cut_off(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"announces|more than"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/ok.pt", size=len(BODY) - 10))
    assert _leftovers(out) == []


def test_already_present_with_the_right_hash_is_not_downloaded(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    out.mkdir()
    (out / "standin.pt").write_bytes(BODY)
    result = fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/ok.pt"))
    assert not result.downloaded
    assert _Handler.requests == []


def test_a_different_file_already_present_is_refused_and_kept(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    out.mkdir()
    (out / "standin.pt").write_bytes(b"someone's own checkpoint")
    with pytest.raises(WeightsHashMismatch, match="move it away"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/ok.pt"))
    assert (out / "standin.pt").read_bytes() == b"someone's own checkpoint"
    assert _Handler.requests == []


def test_redirect_to_plain_http_elsewhere_is_refused(server: str, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    with pytest.raises(WeightsError, match=r"HTTPS only"):
        fetch("standin", out, tmp_path, add_to_dvc=False, table=_table(f"{server}/moved.pt"))
    assert _leftovers(out) == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://github.com/x.pt", True),
        ("http://127.0.0.1:8000/x.pt", True),
        ("http://localhost/x.pt", True),
        ("http://[::1]:80/x.pt", True),
        ("http://github.com/x.pt", False),
        ("ftp://127.0.0.1/x.pt", False),
        ("file:///etc/passwd", False),
    ],
)
def test_only_https_or_loopback_http(url: str, ok: bool) -> None:
    if ok:
        check_url(url)
    else:
        with pytest.raises(WeightsError):
            check_url(url)


def test_mirror_env_and_url_flag_override_the_pinned_url(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = PINNED["yolo11n"]
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    assert weights.source_url(pinned) == pinned.url
    monkeypatch.setenv(weights.MIRROR_ENV, "https://mirror.example/yolo/")
    assert weights.source_url(pinned) == "https://mirror.example/yolo/yolo11n.pt"
    assert weights.source_url(pinned, "https://other.example/a.pt") == "https://other.example/a.pt"


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="yolo11n"):
        fetch("yolo99z", tmp_path / "weights", tmp_path, add_to_dvc=False)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_in_the_pipeline_imports_the_weights_command() -> None:
    """The one module that opens a URL runs only when a person asks: no stage, flow or script imports it."""
    offenders = [
        path.relative_to(REPO).as_posix()
        for folder in ("stages", "flows", "scripts")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "weights.py" and "stages.data.weights" in _imported_modules(path)
    ]
    assert offenders == []
    # And nothing else in the code opens URLs with the standard library's client.
    openers = [
        path.relative_to(REPO).as_posix()
        for folder in ("stages", "flows")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "stages" / "data" / "weights.py"
        and {"urllib.request", "http.client"} & _imported_modules(path)
    ]
    assert openers == []


def test_a_missing_pretrained_file_points_at_the_weights_command(tmp_path: Path) -> None:
    from stages.core.errors import ConfigError
    from stages.training.spec import resolve_model

    with pytest.raises(ConfigError, match=r"make weights MODEL=yolo11n") as err:
        resolve_model("weights/yolo11n.pt", tmp_path, tmp_path)
    assert err.value.key == "train.model"


def test_a_dvc_tracked_file_not_pulled_says_dvc_pull(tmp_path: Path) -> None:
    from stages.core.errors import ConfigError
    from stages.training.spec import resolve_model

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "yolo11n.pt.dvc").write_text("outs:\n- md5: 0\n  path: yolo11n.pt\n")
    with pytest.raises(ConfigError, match=r"dvc pull .*weights/yolo11n\.pt\.dvc"):
        resolve_model("weights/yolo11n.pt", tmp_path, tmp_path)


def test_a_held_workspace_is_waited_for_then_refused_before_any_download(server: str, tmp_path: Path) -> None:
    from stages.core.lock import WorkspaceBusy, workspace_lock

    (tmp_path / ".dvc").mkdir()
    with workspace_lock(tmp_path, 0, "a pipeline run"), pytest.raises(WorkspaceBusy, match="a pipeline run"):
        fetch("standin", tmp_path / "weights", tmp_path, lock_timeout_s=0, table=_table(f"{server}/ok.pt"))
    assert _Handler.requests == []
    assert _leftovers(tmp_path / "weights") == []


def test_no_stage_depends_on_the_weights_command() -> None:
    """Editing the command (a new pin, a mirror) retrains nothing: no stage's dvc.yaml deps cover it."""
    import yaml

    file = "stages/data/weights.py"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    covering = [
        (name, dep)
        for name, stage in stages.items()
        for dep in stage.get("deps", [])
        if isinstance(dep, str) and (file == dep or file.startswith(dep.rstrip("/") + "/"))
    ]
    assert covering == []
