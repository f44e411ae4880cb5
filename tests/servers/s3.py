"""A real S3-compatible server process on 127.0.0.1 for tests (moto's server, a dev dependency).

The server starts with authentication off just long enough to create a bucket and an IAM user allowed
to use it, with an access key; then authentication is switched on, so every later request must be
signed with that key (a wrong key is refused as a real S3 would). Clients get the key through the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or DVC's local config, never a file of
the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for_port

BUCKET = "dvc-remote"
REGION = "us-east-1"
ALLOW_ALL_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server and the credentials it accepts.

    Attributes:
        endpoint: Its URL (``http://127.0.0.1:PORT``).
        bucket: A bucket that exists.
        access_key_id: An access key it accepts.
        secret_access_key: That key's secret.
        process: The server process.
    """

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """The environment a client needs: the key, the region, no lookups of instance metadata."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def _client(service: str, endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    # Any key passes while authentication is off; these are never accepted once it is on.
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )


def start_s3(folder: Path) -> S3Server:
    """Start the server on a free loopback port; a bucket and a user's key that may use it.

    Skips the calling test when moto's server is not installed (the project's dev dependencies).
    """
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"moto[server] not installed (the project's dev dependencies): {exc}")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "s3.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_port(port, timeout_s=60, alive=process)
        iam = _client("iam", endpoint)
        iam.create_user(UserName="pipeline")
        iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_ALL_S3))
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        _client("s3", endpoint).create_bucket(Bucket=BUCKET)
        # From now on every request is checked against the IAM users' keys and policies.
        # text/plain: a form body would be parsed away before moto reads it. No proxy from the environment.
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
            assert answer.status == 200
    except BaseException:
        stop_s3_process(process)
        raise
    return S3Server(
        endpoint=endpoint,
        bucket=BUCKET,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        process=process,
    )


def stop_s3_process(process: subprocess.Popen[bytes]) -> None:
    """Stop the server process."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server on 127.0.0.1 for one test, stopped after it."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        stop_s3_process(server.process)
