"""Which DVC remote a push goes to, the warning for one inside the workspace, and how failures read
(stages/core/remotes.py). Pushes to real servers: tests/e2e/test_remotes.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.core.errors import RemoteError
from stages.core.remotes import Remote, classify, inside_workspace, no_backup_warning, resolve_remote


def workspace(root: Path, config: str, local: str = "") -> Path:
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc" / "config").write_text(config)
    if local:
        (root / ".dvc" / "config.local").write_text(local)
    return root


def test_the_projects_default_remote_is_inside_the_workspace_and_warned_about(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    ws = workspace(tmp_path / "ws", (repo / ".dvc" / "config").read_text())
    remote = resolve_remote(ws)
    assert remote == Remote(name="local", url=str(ws / ".dvc-storage"))
    assert inside_workspace(remote, ws)
    warning = no_backup_warning(remote, ws)
    assert warning is not None and "'local'" in warning and "no backup" in warning
    assert str(ws / ".dvc-storage") in warning


@pytest.mark.parametrize(
    "url",
    ["ssh://ci@127.0.0.1:2222/srv/dvc", "s3://bucket/dvc", "../../elsewhere", "file:///tmp/shared-dvc-storage"],
)
def test_a_remote_outside_the_workspace_is_not_warned_about(tmp_path: Path, url: str) -> None:
    ws = workspace(tmp_path / "ws", f"[core]\n    remote = fleet\n['remote \"fleet\"']\n    url = {url}\n")
    remote = resolve_remote(ws)
    assert remote.name == "fleet"
    assert no_backup_warning(remote, ws) is None


def test_file_url_and_a_remote_of_a_remote_inside_the_workspace_are_warned_about(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    config = (
        "[core]\n    remote = sub\n"
        f"['remote \"base\"']\n    url = file://{ws}/store\n"
        "['remote \"sub\"']\n    url = remote://base/models\n"
    )
    remote = resolve_remote(workspace(ws, config))
    assert remote.url == f"file://{ws}/store/models"
    assert no_backup_warning(remote, ws) is not None


def test_the_local_config_chooses_the_remote(tmp_path: Path) -> None:
    config = "[core]\n    remote = local\n['remote \"local\"']\n    url = ../.dvc-storage\n"
    local = "[core]\n    remote = fleet\n['remote \"fleet\"']\n    url = s3://bucket/dvc\n"
    remote = resolve_remote(workspace(tmp_path / "ws", config, local))
    assert remote == Remote(name="fleet", url="s3://bucket/dvc")


def test_no_default_remote_and_an_unknown_remote_are_refused_by_name(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "['remote \"fleet\"']\n    url = s3://bucket/dvc\n")
    with pytest.raises(RemoteError, match="no default DVC remote: add one with `dvc remote add -d"):
        resolve_remote(ws)
    with pytest.raises(RemoteError, match=r"DVC remote 'backup' is not configured \(configured: fleet\)"):
        resolve_remote(ws, "backup")


SSH = Remote(name="fleet", url="ssh://ci@127.0.0.1:2222/srv/dvc")
S3 = Remote(name="fleet", url="s3://bucket/dvc")


def raised_from(outer: Exception, inner: Exception) -> Exception:
    """``outer`` as raised while handling ``inner`` (how DVC wraps what a file system raised)."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_refused_credentials_say_where_they_go() -> None:
    ssh = classify(raised_from(RuntimeError("unexpected error"), PermissionError("Permission denied")), SSH)
    assert "DVC remote 'fleet' (ssh://ci@127.0.0.1:2222/srv/dvc) refused the credentials" in ssh.message
    assert "dvc remote modify --local fleet keyfile" in ssh.message and not ssh.retryable
    s3 = classify(PermissionError("Forbidden"), S3)
    assert "AWS_ACCESS_KEY_ID" in s3.message and "--local fleet secret_access_key" in s3.message


def test_an_unreachable_server_and_a_dropped_connection_read_differently() -> None:
    refused = classify(ConnectionRefusedError(111, "Connect call failed"), SSH)
    assert "cannot be reached" in refused.message and not refused.retryable
    from dvc.exceptions import UploadError

    dropped = classify(UploadError(3), SSH)
    assert "did not complete (3 files failed to upload)" in dropped.message
    assert "local cache is intact" in dropped.message and dropped.retryable
    assert classify(ConnectionResetError(104, "reset"), S3).retryable


def test_anything_else_still_names_the_remote() -> None:
    other = classify(ValueError("odd"), S3)
    assert other.message == "push to DVC remote 'fleet' (s3://bucket/dvc) failed: ValueError: odd"
    assert other.remote == "fleet" and str(other).startswith("[stage 'push'] ")


def test_a_pull_reads_as_a_pull() -> None:
    from dvc.exceptions import DownloadError

    dropped = classify(DownloadError(2), S3, "pull")
    assert dropped.message.startswith("pull from DVC remote 'fleet' (s3://bucket/dvc) did not complete")
    assert "pull again" in dropped.message and dropped.retryable
    refused = classify(ConnectionRefusedError(111, "refused"), SSH, "pull")
    assert refused.message.endswith("then pull again") and not refused.retryable


def test_a_remote_that_refers_to_itself_is_refused(tmp_path: Path) -> None:
    config = (
        "[core]\n    remote = a\n['remote \"a\"']\n    url = remote://b/x\n['remote \"b\"']\n    url = remote://a/y\n"
    )
    with pytest.raises(RemoteError, match="DVC remote 'a' refers to itself through remote:// URLs"):
        resolve_remote(workspace(tmp_path / "ws", config))
