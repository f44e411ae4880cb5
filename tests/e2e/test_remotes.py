"""A shared DVC remote on real servers on loopback: SSH (OpenSSH's sshd, key auth) and S3 (moto's server).

Each test pushes a small DVC-tracked folder with the project's push (``python -m stages.core.remotes
push``, what ``make demo`` and CI run), then clones the git repository afresh and pulls: the files must
come back byte for byte. Credentials go into ``.dvc/config.local`` or the environment, never into the
committed ``.dvc/config``. Refused credentials, a server that does not answer and a connection dropped
mid-push are each one clear error naming the remote, with no traceback; after a dropped push the local
cache is unchanged and the next push completes. Every process runs under the network guard
(``tests/netguard``): nothing may reach beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tree_digest, venv_env
from tests.e2e.workspace import GIT_ENV, NETGUARD
from tests.servers import free_port
from tests.servers.s3 import S3Server, s3_server  # noqa: F401 (fixture)
from tests.servers.sshd import Sshd, sshd  # noqa: F401 (fixture)
from tests.servers.tcp_proxy import dropping_proxy

pytestmark = pytest.mark.e2e

REMOTE = "fleet"


class Repo:
    """A git + DVC repository with a small tracked folder, its processes under the network guard."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.env = venv_env()
        for name in list(self.env):
            # Nothing of the machine's own: no agent keys, no AWS profile, no proxy, no DVC config of the user.
            if name.startswith(("AWS_", "SSH_", "DVC_", "PIPELINE_")) or name.lower().endswith("_proxy"):
                del self.env[name]
        self.env.update(GIT_ENV)
        self.env["HOME"] = str(home)  # asyncssh reads ~/.ssh/known_hosts and ~/.ssh/config
        self.env["DVC_NO_ANALYTICS"] = "1"
        self.env["AWS_EC2_METADATA_DISABLED"] = "true"
        self.netguard_log = root.parent / f"{root.name}.netguard.log"
        self.env["NETGUARD_LOG"] = str(self.netguard_log)
        # The project's code from this checkout; the cwd (the repository) has no `stages` of its own.
        self.env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), str(REPO)])

    def run(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args), cwd=self.root, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300
        )
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def dvc(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args, env=env, check=check)

    def push(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The project's push; not checked (tests look at its exit code and words)."""
        return self.run(sys.executable, "-m", "stages.core.remotes", "push", *args, env=env, check=False)

    def pull(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The project's pull (what CI runs); not checked."""
        return self.run(sys.executable, "-m", "stages.core.remotes", "pull", *args, env=env, check=False)

    def network_attempts(self) -> list[str]:
        return self.netguard_log.read_text().splitlines() if self.netguard_log.is_file() else []

    def cache_digest(self) -> dict[str, str]:
        return tree_digest(self.root / ".dvc" / "cache")


def make_repo(tmp_path: Path, home: Path, big_bytes: int = 0) -> Repo:
    """A committed repository with ``data/`` tracked by DVC: a few small files (and a big one, if asked)."""
    root = tmp_path / "ws"
    root.mkdir()
    repo = Repo(root, home)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    data = root / "data"
    (data / "labels").mkdir(parents=True)
    for i in range(5):
        (data / "labels" / f"{i}.txt").write_text(f"{i} 0.5 0.5 0.1 0.1\n")
    (data / "data.yaml").write_text("names: {0: a}\n")
    if big_bytes:
        (data / "big.bin").write_bytes(os.urandom(big_bytes))
    repo.dvc("add", "-q", "data")
    repo.run("git", "add", ".")
    repo.run("git", "commit", "-q", "-m", "data")
    return repo


def committed_config(repo: Repo) -> str:
    """``.dvc/config`` as committed (``git show HEAD:``), not as on disk."""
    return repo.run("git", "show", "HEAD:.dvc/config").stdout


def clone_and_pull(
    repo: Repo, tmp_path: Path, setup: list[list[str]], env: dict[str, str] | None = None, project_pull: bool = False
) -> Path:
    """``git clone`` the repository, run the ``dvc`` commands in ``setup`` there (credentials: the
    local config is not cloned), ``dvc pull`` (or the project's pull); returns the clone."""
    clone = tmp_path / "clone"
    repo.run("git", "clone", "-q", str(repo.root), str(clone))
    other = Repo(clone, Path(repo.env["HOME"]))
    other.netguard_log = repo.netguard_log
    other.env["NETGUARD_LOG"] = str(repo.netguard_log)
    for args in setup:
        other.dvc(*args)
    if project_pull:
        pulled = other.pull(env=env)
        assert pulled.returncode == 0 and "fetched" in pulled.stdout, pulled.stdout + pulled.stderr
    else:
        other.dvc("pull", env=env)
    return clone


def ssh_url(server: Sshd, port: int, store: Path) -> str:
    return f"ssh://{server.user}@127.0.0.1:{port}{store}"


def trust_port(server: Sshd, port: int) -> None:
    """Make the sshd's host key known under another port too (a proxy's)."""
    known = server.home / ".ssh" / "known_hosts"
    key = known.read_text().splitlines()[0].split(" ", 1)[1]
    with known.open("a") as out:
        out.write(f"[127.0.0.1]:{port} {key}\n")


def torn_files(store: Path) -> list[Path]:
    """Files on an SSH remote whose content is not what their name (an md5) says: a partial upload
    left under its final name, which a later push would skip and a pull would hand out."""
    import hashlib

    torn = []
    for path in (store / "files" / "md5").glob("*/*"):
        if path.suffix in (".tmp", ".dir"):
            continue  # an upload in progress under its temporary name; a listing (hashed otherwise)
        if hashlib.md5(path.read_bytes()).hexdigest() != path.parent.name + path.name:
            torn.append(path)
    return torn


def assert_clear_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """A failed push that says what failed in one error line, with no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_ssh_push_clone_pull_round_trip(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    repo = make_repo(tmp_path, sshd.home)
    store = tmp_path / "store"
    repo.dvc("remote", "add", "-d", REMOTE, ssh_url(sshd, sshd.port, store))
    repo.dvc("remote", "modify", "--local", REMOTE, "keyfile", str(sshd.key))
    repo.run("git", "add", ".dvc/config")
    repo.run("git", "commit", "-q", "-m", "the shared remote")

    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "no backup" not in pushed.stderr  # a server, not a folder of the workspace
    assert any(store.rglob("*")), "nothing arrived on the server"
    assert repo.dvc("status", "-c").stdout.strip() == f"Cache and remote '{REMOTE}' are in sync."

    config = committed_config(repo)
    assert "keyfile" not in config and str(sshd.key) not in config
    clone = clone_and_pull(repo, tmp_path, [["remote", "modify", "--local", REMOTE, "keyfile", str(sshd.key)]])
    assert tree_digest(clone / "data") == tree_digest(repo.root / "data")
    assert repo.network_attempts() == []


def test_s3_push_clone_pull_round_trip(tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    repo = make_repo(tmp_path, tmp_path / "home")
    repo.dvc("remote", "add", "-d", REMOTE, f"s3://{s3_server.bucket}/store")
    repo.dvc("remote", "modify", REMOTE, "endpointurl", s3_server.endpoint)
    repo.run("git", "add", ".dvc/config")
    repo.run("git", "commit", "-q", "-m", "the shared remote")

    # Credentials from the environment here, from the local config in the clone.
    pushed = repo.push(env=s3_server.env())
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 7 file(s)" in pushed.stdout  # the folder's 6 files and its .dir listing

    config = committed_config(repo)
    assert s3_server.access_key_id not in config and s3_server.secret_access_key not in config
    setup = [
        ["remote", "modify", "--local", REMOTE, "access_key_id", s3_server.access_key_id],
        ["remote", "modify", "--local", REMOTE, "secret_access_key", s3_server.secret_access_key],
    ]
    clone = clone_and_pull(repo, tmp_path, setup, env={"AWS_DEFAULT_REGION": "us-east-1"}, project_pull=True)
    assert tree_digest(clone / "data") == tree_digest(repo.root / "data")
    tracked = subprocess.run(["git", "grep", "-I", "-l", s3_server.secret_access_key], cwd=clone, capture_output=True)
    assert tracked.stdout == b"", "the secret key was committed"
    assert repo.network_attempts() == []


def test_ssh_wrong_key_is_one_clear_error(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    repo = make_repo(tmp_path, sshd.home)
    repo.dvc("remote", "add", "-d", REMOTE, ssh_url(sshd, sshd.port, tmp_path / "store"))
    repo.dvc("remote", "modify", "--local", REMOTE, "keyfile", str(sshd.other_key))
    before = repo.cache_digest()

    refused = repo.push()
    assert refused.returncode == 2
    assert_clear_error(refused, f"DVC remote '{REMOTE}'", "refused the credentials", "keyfile")
    assert repo.cache_digest() == before
    assert not (tmp_path / "store").exists()


def test_s3_wrong_key_is_one_clear_error(tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    repo = make_repo(tmp_path, tmp_path / "home")
    repo.dvc("remote", "add", "-d", REMOTE, f"s3://{s3_server.bucket}/store")
    repo.dvc("remote", "modify", REMOTE, "endpointurl", s3_server.endpoint)
    wrong = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}

    refused = repo.push(env=wrong)
    assert refused.returncode == 2
    assert_clear_error(refused, f"DVC remote '{REMOTE}'", "refused the credentials", "AWS_SECRET_ACCESS_KEY")
    # CI pulls before it pushes: a wrong key stops it there, as clearly.
    pushed = repo.push(env=s3_server.env())
    assert pushed.returncode == 0, pushed.stderr
    refused = repo.pull(env=wrong)
    assert refused.returncode == 2
    assert_clear_error(refused, f"DVC remote '{REMOTE}'", "refused the credentials", "AWS_SECRET_ACCESS_KEY")


def test_unreachable_server_is_one_clear_error(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    repo = make_repo(tmp_path, sshd.home)
    nobody = free_port()  # nothing listens there
    repo.dvc("remote", "add", "-d", REMOTE, ssh_url(sshd, nobody, tmp_path / "store"))
    repo.dvc("remote", "modify", "--local", REMOTE, "keyfile", str(sshd.key))

    refused = repo.push()
    assert refused.returncode == 2
    assert_clear_error(refused, f"DVC remote '{REMOTE}'", "cannot be reached", f"127.0.0.1:{nobody}")


def test_dropped_connection_keeps_the_cache_and_the_next_push_completes(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    repo = make_repo(tmp_path, sshd.home, big_bytes=2 << 20)
    store = tmp_path / "store"
    before = repo.cache_digest()
    with dropping_proxy(sshd.port, cut_after=512 << 10, drops=1) as proxy:
        trust_port(sshd, proxy.port)
        repo.dvc("remote", "add", "-d", REMOTE, ssh_url(sshd, proxy.port, store))
        repo.dvc("remote", "modify", "--local", REMOTE, "keyfile", str(sshd.key))

        # No retries: the push fails, says so, and leaves the cache as it was.
        failed = repo.push("--retries", "0")
        assert proxy.dropped == 1, "the connection was never cut: the file is too small for cut_after"
        assert failed.returncode == 1
        assert_clear_error(failed, f"DVC remote '{REMOTE}'", "did not complete", "push again")
        assert repo.cache_digest() == before
        assert torn_files(store) == []

        # The next push completes.
        again = repo.push()
        assert again.returncode == 0, again.stderr
        assert "in 1 attempt(s)" in again.stdout
        assert repo.dvc("status", "-c").stdout.strip() == f"Cache and remote '{REMOTE}' are in sync."

        # With retries, a connection cut in the middle is pushed again within the same call.
        proxy.drops_left = 1
        (repo.root / "data" / "more.bin").write_bytes(os.urandom(2 << 20))
        repo.dvc("add", "-q", "data")
        retried = repo.push("--retries", "1")
        assert proxy.dropped == 2
        assert retried.returncode == 0, retried.stderr
        assert "retrying in" in retried.stderr and "in 2 attempt(s)" in retried.stdout
        repo.run("git", "add", ".dvc/config", "data.dvc")
        repo.run("git", "commit", "-q", "-m", "more data, the shared remote")

    trust = [["remote", "modify", "--local", REMOTE, "keyfile", str(sshd.key)]]
    trust.append(["remote", "modify", REMOTE, "url", ssh_url(sshd, sshd.port, store)])  # not through the proxy
    clone = clone_and_pull(repo, tmp_path, trust)
    assert tree_digest(clone / "data") == tree_digest(repo.root / "data")
    assert repo.network_attempts() == []


def test_a_remote_inside_the_workspace_warns_once_per_push(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, tmp_path / "home")
    for i in range(40):  # many files: a warning per file would show
        (repo.root / "data" / "labels" / f"extra{i}.txt").write_text(f"{i}\n")
    repo.dvc("add", "-q", "data")
    # The project's own remote: a folder inside the workspace (.dvc/config).
    (repo.root / ".dvc" / "config").write_text((REPO / ".dvc" / "config").read_text())

    first = repo.push()
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("no backup") == 1, first.stderr
    assert "warning: DVC remote 'local' is " in first.stderr and "pushed 47 file(s)" in first.stdout
    # Every push to it warns again, once: each one is one more that is no backup.
    second = repo.push()
    assert second.returncode == 0 and second.stderr.count("no backup") == 1, second.stderr
    assert "pushed 0 file(s)" in second.stdout


def test_push_run_cache_sends_the_run_cache_as_dvc_push_does(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, tmp_path / "home")
    store = tmp_path / "store"  # outside the workspace: no warning
    repo.dvc("remote", "add", "-d", REMOTE, str(store))
    repo.dvc("stage", "add", "-q", "-n", "count", "-d", "data", "-o", "count.txt", "ls -R data | wc -l > count.txt")
    repo.dvc("repro", "-q")

    outputs_only = repo.push()  # what pull requests push (scripts/ci_retrain.sh, PUSH_RUN_CACHE=0)
    assert outputs_only.returncode == 0 and outputs_only.stderr == "", outputs_only.stderr
    assert not (store / "runs").exists()
    with_runs = repo.push("--run-cache")
    assert with_runs.returncode == 0, with_runs.stderr
    assert any((store / "runs").rglob("*")), "the run-cache was not pushed"


def test_s3_dropped_connection_is_retried_by_the_s3_client(tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    repo = make_repo(tmp_path, tmp_path / "home", big_bytes=2 << 20)
    before = repo.cache_digest()
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with dropping_proxy(port, cut_after=512 << 10, drops=1) as proxy:
        repo.dvc("remote", "add", "-d", REMOTE, f"s3://{s3_server.bucket}/store")
        repo.dvc("remote", "modify", REMOTE, "endpointurl", f"http://127.0.0.1:{proxy.port}")
        repo.run("git", "add", ".dvc/config")
        repo.run("git", "commit", "-q", "-m", "the shared remote")
        # The S3 client (s3fs over botocore) retries a request whose connection was reset: no retry of ours.
        pushed = repo.push("--retries", "0", env=s3_server.env())
        assert proxy.dropped == 1, "the connection was never cut: the file is too small for cut_after"
        assert pushed.returncode == 0, pushed.stderr
        assert "in 1 attempt(s)" in pushed.stdout
        status = repo.dvc("status", "-c", env=s3_server.env()).stdout.strip()
        assert status == f"Cache and remote '{REMOTE}' are in sync."
    assert repo.cache_digest() == before
    direct = [["remote", "modify", REMOTE, "endpointurl", s3_server.endpoint]]  # not through the proxy
    clone = clone_and_pull(repo, tmp_path, direct, env=s3_server.env(), project_pull=True)
    assert tree_digest(clone / "data") == tree_digest(repo.root / "data")
    assert repo.network_attempts() == []
