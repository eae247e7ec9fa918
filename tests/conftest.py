"""Shared test fixtures: a local moto S3 server and fresh s3:// prefixes on it.

- ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free port, points the
  standard AWS environment at it (fake credentials, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``; any real
  profile or credential files are hidden), creates one bucket, and returns an :class:`S3Server`
  (``endpoint``, ``bucket``, ``url`` = ``s3://<bucket>``). The environment is restored at the end of the
  session. Nothing leaves the machine.
- ``s3_bucket`` (function): a fresh, empty ``s3://<bucket>/<test-name>-<uuid>`` prefix (a ``str``) on that
  server, so tests never see each other's objects. ``rvos_batch.storage.get_fs`` finds the endpoint through
  ``AWS_ENDPOINT_URL``; pass no storage options.

Tests that use them should be marked ``@pytest.mark.s3``.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

S3_BUCKET = "rvos-test"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str  # bucket name, already created

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with one bucket, and the AWS environment pointing at it."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    empty = tmp_path_factory.mktemp("aws") / "none"  # hides ~/.aws config and credentials
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        from rvos_batch.storage import get_fs

        fs, _ = get_fs(f"s3://{S3_BUCKET}")
        fs.mkdir(S3_BUCKET)
        try:
            yield S3Server(endpoint=endpoint, bucket=S3_BUCKET)
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty prefix ``s3://<bucket>/<test-name>-<uuid>`` on the moto server (no trailing slash)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60].strip("-") or "test"
    return f"{s3_server.url}/{name}-{uuid.uuid4().hex[:8]}"
