"""`ray start --head`, then the job sent with `ray job submit`: its own module, so that no other Ray instance of
this pytest process (test_job.py's module-scoped one) is alive while the head starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobkit import REPO, make_corpus, tiny_model
from test_job import _wait_for, assert_exactly_once

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ray_job_submit_to_a_started_cluster(tmp_path, model_path):
    """`ray start --head`, then the job sent with `ray job submit`, as users run it.

    The head runs with --block in its own session, and is stopped by ending that session: `ray stop` would
    stop every Ray instance on the machine, this test's neighbours included.
    """
    import tempfile

    bindir = Path(sys.executable).parent
    ray_bin = str(bindir / "ray")
    corpus = str(tmp_path / "corpus")
    ids = make_corpus(corpus, [4, 5, 3, 6], videos_per_file=2)
    out = str(tmp_path / "out")
    port, dash = _free_port(), _free_port()
    # token authentication on, for the cluster and the client alike (the token lives in ~/.ray/auth_token);
    # RAY_ADDRESS of another Ray instance in this process (the module's local one) must not leak in
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{bindir}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # unix socket paths must stay under 107 bytes
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        _wait_for(lambda: _port_open(dash), 180, "the head's job API", head)
        deadline = time.monotonic() + 120
        while True:  # the job API answers before the head's job agent is up: "try again later", as it says
            r = subprocess.run(
                [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--", sys.executable,
                 str(REPO / "jobs" / "label_corpus.py"), corpus, out, "--model", model_path,
                 "--videos-per-shard", "2", "--num-actors", "2", "--no-preview"],
                capture_output=True, text=True, env=env, timeout=400, cwd=str(tmp_path),
            )
            if "No available agent" not in r.stdout + r.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert "succeeded" in (r.stdout + r.stderr)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
    assert_exactly_once(out, ids)
