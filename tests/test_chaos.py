"""Chaos: kill drivers and actors, fail and slow the object store, race two runs; output stays exactly once.

Every run here is the real thing: ``python -m rvos_batch label ...`` in its own session with its own local Ray
(``RAY_TMPDIR`` private to the test, so no other Ray on the machine is joined or touched). "Killing the driver"
SIGKILLs every process of that session (driver, GCS, raylet, actors), as losing the machine would. Fault
points inside workers come from ``RVOS_BATCH_FAULTS`` (rvos_batch.job.faults), which reaches the actors through
the environment the driver starts Ray with; ``"action": "hold"`` parks a worker exactly at a point (after a
shard's data, before its marker) so the test can kill the driver there. Object-store faults come from
:class:`FaultProxy`, an HTTP proxy in front of the moto server that fails, delays or answers-then-fails
requests. After every scenario the output is checked: every marker's files exist with the recorded sha256
and row counts (never a marker without its data), no (video, frame, object) twice, every video once, and
masks identical to an uninterrupted reference run.

The long scenarios are marked ``slow`` (skipped in CI, run by scripts/nightly.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobkit import make_corpus, tiny_model

from rvos_batch.errors import MaskStoreError
from rvos_batch.maskstore import MaskStore

pytestmark = pytest.mark.ray

LENGTHS = [6, 4, 7, 3, 5]  # five one-video shards
FLAGS = ("--videos-per-shard", "1", "--no-preview", "--no-progress")
TIMEOUT = 300


# --------------------------------------------------------------------------------------------- processes


@dataclass
class Run:
    """A labeling driver started in its own session, output captured to files."""

    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    ray_tmp: str

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(self)
            raise AssertionError(f"the run did not finish in {timeout} s: {self.err()[-3000:]}") from None

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")


def _env(ray_tmp: str, faults: dict | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RVOS_BATCH_FAULTS")}
    env["RAY_TMPDIR"] = ray_tmp
    if faults is not None:
        env["RVOS_BATCH_FAULTS"] = json.dumps(faults)
    env.update(extra)
    return env


def start_label(corpus: str, out: str, model: str, logs: Path, *extra: str, faults: dict | None = None,
                env: dict[str, str] | None = None, actors: int = 1) -> Run:
    logs.mkdir(parents=True, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="rvc", dir="/tmp")  # unix socket paths must stay short
    n = len(list(logs.glob("*.stdout")))
    stdout, stderr = logs / f"run{n}.stdout", logs / f"run{n}.stderr"
    with open(stdout, "w") as fo, open(stderr, "w") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rvos_batch", "label", corpus, out, "--model", model, *FLAGS,
             "--num-actors", str(actors), *extra],
            stdout=fo, stderr=fe, text=True, start_new_session=True, env=_env(ray_tmp, faults, **(env or {})),
        )
    return Run(proc, stdout, stderr, ray_tmp)


def finish(run: Run, timeout: float = TIMEOUT) -> int:
    rc = run.wait(timeout)
    kill_session(run)  # Ray processes that outlive their driver
    return rc


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the driver's session: everything the run started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            pids.append(int(entry))
    return pids


def actor_pids(run: Run, busy: bool = False) -> list[int]:
    """The run's LabelActor processes (``busy``: only those inside ``process``, i.e. in a shard)."""
    title = b"ray::LabelActor.process" if busy else b"ray::LabelActor"
    out = []
    for pid in session_pids(run.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(title):
            out.append(pid)
    return out


def kill_session(run: Run) -> None:
    """SIGKILL the driver and every process of its session, as a lost machine would; wait until all are gone."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = session_pids(run.proc.pid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if run.proc.poll() is None:
        run.proc.wait(timeout=10)
    shutil.rmtree(run.ray_tmp, ignore_errors=True)


def wait_for(predicate: Callable[[], bool], what: str, run: Run | None = None, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {run.proc.returncode}) before {what}: {run.err()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status_json(out: str) -> dict:
    """``rvos-batch status OUT --json``, through the CLI entry point (in this process: no interpreter start)."""
    from rvos_batch.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", out, "--json"]) == 0
    return json.loads(buf.getvalue())


# --------------------------------------------------------------------------------------------- checks


def check_invariants(out: str) -> pa.Table:
    """Every marker's files exist as recorded, no (video, frame, object) twice; returns the visible masks."""
    store = MaskStore(out)
    store.fs.invalidate_cache()  # other processes wrote OUT since this one last listed it
    for shard_id, marker in store.committed_shards().items():
        for kind in ("masks", "videos"):
            info = marker["files"][kind]
            data = store.fs.cat_file(store._path(info["path"]))  # never a marker without its data
            assert hashlib.sha256(data).hexdigest() == info["sha256"], f"shard {shard_id}: {kind} file changed"
            assert pq.read_metadata(io.BytesIO(data)).num_rows == info["rows"]
    masks = store.masks_dataset().to_table()
    keys = list(zip(*(masks.column(c).to_pylist() for c in ("video_id", "frame_index", "object_id")), strict=True))
    assert len(keys) == len(set(keys)), "a (video, frame, object) counted twice"
    return masks


def check_store(out: str, video_ids: list[str]) -> tuple[pa.Table, pa.Table]:
    """The invariants and completeness, then (masks sorted, videos without timings) to compare with a reference."""
    masks = check_invariants(out)
    videos = MaskStore(out).videos_dataset().to_table().drop_columns(["seconds"])
    assert sorted(videos.column("video_id").to_pylist()) == sorted(video_ids), "every video exactly once"
    return (masks.sort_by([("video_id", "ascending"), ("frame_index", "ascending"), ("object_id", "ascending")]),
            videos.sort_by("video_id"))


def assert_same(out: str, reference: tuple[pa.Table, pa.Table], video_ids: list[str]) -> None:
    masks, videos = check_store(out, video_ids)
    assert masks.num_rows == reference[0].num_rows
    assert masks.equals(reference[0]), "masks differ from the uninterrupted reference run"
    assert videos.equals(reference[1])


@dataclass(frozen=True)
class Setup:
    root: Path
    corpus: str
    ids: list[str]
    model: str
    reference: tuple[pa.Table, pa.Table]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """A corpus of five one-video shards, a tiny model, and the output of an uninterrupted run."""
    return _make_setup(tmp_path_factory.mktemp("chaos"), LENGTHS)


def _make_setup(root: Path, lengths: list[int]) -> Setup:
    """The reference runs the actors' own ShardWorker in this process with one torch thread, as an actor does
    (``--cpus-per-actor 1``): the same output as an uninterrupted Ray run (test_reference_matches_a_ray_run),
    without starting Ray once more.
    """
    import torch

    from rvos_batch.job.config import LabelConfig
    from rvos_batch.job.worker import run_in_process

    corpus = str(root / "corpus")
    ids = make_corpus(corpus, lengths, videos_per_file=2)
    model = tiny_model(root / "tiny.pt")
    out = str(root / "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(LabelConfig(corpus=corpus, out=out, model=model, videos_per_shard=1))
    finally:
        torch.set_num_threads(threads)
    return Setup(root, corpus, ids, model, check_store(out, ids))


@pytest.mark.slow
def test_reference_matches_a_ray_run(setup: Setup, tmp_path: Path) -> None:
    rerun_completes(setup, str(tmp_path / "out"), tmp_path / "logs", already_done=0)


def rerun_completes(s: Setup, out: str, logs: Path, already_done: int | None = None) -> None:
    run = start_label(s.corpus, out, s.model, logs)
    rc = finish(run)
    assert rc == 0, run.err()[-3000:]
    if already_done is not None:
        assert f"({already_done} already done" in run.out(), run.out()
    assert_same(out, s.reference, s.ids)
    assert status_json(out)["shards_failed"] == 0


# --------------------------------------------------------------------------------------------- driver killed


def _markers(out: str) -> set[int]:
    d = Path(out, "_commits")
    return {int(p.stem.split("-")[1]) for p in d.glob("shard-*.json")} if d.is_dir() else set()


def test_killed_between_data_and_marker_then_a_poisoned_shard_then_rerun(setup: Setup, tmp_path: Path) -> None:
    """Three runs into one OUT, each ending differently; the end result is the uninterrupted output.

    1. Every process of the run is killed while shard 2's data is written and its marker is not: the data stays
       invisible. Meanwhile, a second job on the same OUT refuses (the first holds the lock) and changes nothing.
    2. The rerun resumes, but shard 3 kills its actor on every attempt: shard 3 ends failed after
       --max-shard-attempts, the others commit, exit code 1, the summary says to rerun, status shows it.
    3. A rerun without the fault finishes shard 3: output identical to the reference, exactly once.
    """
    out, flag, logs = str(tmp_path / "out"), tmp_path / "flag", tmp_path / "logs"
    run = start_label(setup.corpus, out, setup.model, logs,
                      faults={"exit_before_marker": [2], "action": "hold", "flag": str(flag)})
    try:
        wait_for(flag.exists, "shard 2 to reach its marker", run)
        assert _markers(out) == {0, 1}
        assert Path(out, "masks", "shard-00002.parquet").is_file()  # data written ...
        assert not Path(out, "_commits", "shard-00002.json").exists()  # ... marker not
        visible = set(MaskStore(out).masks_dataset().to_table().column("video_id").to_pylist())
        assert setup.ids[2] not in visible and visible <= set(setup.ids[:2])
        run_json = Path(out, "run.json").read_text()
        second = start_label(setup.corpus, out, setup.model, logs)
        assert finish(second) == 2
        assert "in use by another run" in second.err(), second.err()[-2000:]
        assert Path(out, "run.json").read_text() == run_json, "the refused run wrote run.json"
    finally:
        kill_session(run)
    assert _markers(out) == {0, 1}
    check_invariants(out)

    run = start_label(setup.corpus, out, setup.model, logs, "--max-shard-attempts", "2",
                      faults={"exit_in_shard": [3], "after_frames": 2})
    assert finish(run) == 1, run.err()[-3000:]
    text = run.out()
    assert "4/5 committed (2 already done, 2 this run, 1 failed)" in text, text
    assert "failed shard 3: actor died" in text, text
    assert "rerun the same command to retry them" in text, text
    status = status_json(out)
    assert (status["shards_done"], status["shards_failed"], status["shards_pending"]) == (4, 1, 0), status
    assert "actor died" in status["failed_shard_errors"]["3"]
    assert json.loads(Path(out, "_failed", "shard-00003.json").read_text())["attempts"] == 2
    assert _markers(out) == {0, 1, 2, 4}
    masks, _ = check_store(out, [v for i, v in enumerate(setup.ids) if i != 3])
    assert setup.ids[3] not in set(masks.column("video_id").to_pylist())

    rerun_completes(setup, out, logs, already_done=4)
    assert not Path(out, "_failed", "shard-00003.json").exists()


def _kill_at(setup: Setup, tmp_path: Path, faults: dict, committed_before: set[int]) -> None:
    out, flag = str(tmp_path / "out"), tmp_path / "flag"
    run = start_label(setup.corpus, out, setup.model, tmp_path / "logs",
                      faults={**faults, "action": "hold", "flag": str(flag)})
    try:
        wait_for(flag.exists, f"the fault point {faults}", run)
    finally:
        kill_session(run)
    assert _markers(out) == committed_before
    rerun_completes(setup, out, tmp_path / "logs", already_done=len(committed_before))


@pytest.mark.slow
def test_driver_killed_before_the_first_commit(setup: Setup, tmp_path: Path) -> None:
    _kill_at(setup, tmp_path, {"exit_in_shard": [0], "after_frames": 3}, set())
    assert json.loads(Path(tmp_path, "out", "run.json").read_text())["runs"][0]["finished"] is None


@pytest.mark.slow
def test_driver_killed_during_the_last_shard(setup: Setup, tmp_path: Path) -> None:
    _kill_at(setup, tmp_path, {"exit_in_shard": [4], "after_frames": 2}, {0, 1, 2, 3})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_driver_killed_at_random_points(setup: Setup, tmp_path: Path, seed: int) -> None:
    """A random shard and frame (or just before a random shard's marker); the seed is in the test id."""
    rng = random.Random(seed)
    shard = rng.randrange(len(LENGTHS))
    if rng.random() < 0.5:
        faults: dict = {"exit_in_shard": [shard], "after_frames": rng.randrange(1, LENGTHS[shard] + 1)}
    else:
        faults = {"exit_before_marker": [shard]}
    _kill_at(setup, tmp_path, faults, set(range(shard)))


@pytest.mark.slow
def test_driver_killed_at_random_times_repeatedly(setup: Setup, tmp_path: Path) -> None:
    """No fault points: SIGKILL the whole run after a random delay, three times, then let it finish."""
    out = str(tmp_path / "out")
    rng = random.Random(7)
    for _ in range(3):
        run = start_label(setup.corpus, out, setup.model, tmp_path / "logs")
        time.sleep(rng.uniform(2.0, 12.0))
        kill_session(run)
        if Path(out, "run.json").exists():
            check_invariants(out)
    rerun_completes(setup, out, tmp_path / "logs")


@pytest.mark.slow
def test_only_the_driver_process_killed_then_rerun_at_once(setup: Setup, tmp_path: Path) -> None:
    """SIGKILL the driver alone (its Ray processes may linger a moment) and rerun immediately."""
    out = str(tmp_path / "out")
    run = start_label(setup.corpus, out, setup.model, tmp_path / "logs")
    try:
        wait_for(lambda: len(_markers(out)) >= 1, "a first commit", run)
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=30)
        rerun_completes(setup, out, tmp_path / "logs")
    finally:
        kill_session(run)


# --------------------------------------------------------------------------------------------- actors killed


@pytest.mark.slow
def test_actors_killed_repeatedly(tmp_path: Path) -> None:
    """Two actors on eight 40-frame shards; SIGKILL an actor in the middle of a shard four times, at random
    moments: the shards are retried on the restarted actors and everything lands exactly once. (Eight, not six:
    with six, a run on a loaded machine once finished before the fourth kill.)"""
    s = _make_setup(tmp_path / "long", [40] * 8)
    out = str(tmp_path / "out")
    run = start_label(s.corpus, out, s.model, tmp_path / "logs", "--max-shard-attempts", "6", actors=2)
    rng = random.Random(3)
    kills = 0
    try:
        while kills < 4 and run.proc.poll() is None:
            busy = actor_pids(run, busy=True)
            if busy:
                time.sleep(rng.uniform(0.1, 0.8))
                busy = actor_pids(run, busy=True)
                if busy:
                    os.kill(rng.choice(busy), signal.SIGKILL)
                    kills += 1
            time.sleep(0.05)
        rc = run.wait()
    finally:
        kill_session(run)
    assert rc == 0, run.err()[-3000:]
    assert kills == 4, f"only {kills} kills before the run ended"
    assert "(0 already done, 8 this run, 0 failed)" in run.out(), run.out()
    assert_same(out, s.reference, s.ids)


# --------------------------------------------------------------------------------------------- two jobs


@pytest.mark.slow
def test_two_jobs_started_at_once_on_the_same_out(setup: Setup, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    runs = [start_label(setup.corpus, out, setup.model, tmp_path / "logs") for _ in range(2)]
    codes = sorted(finish(r) for r in runs)
    assert codes == [0, 2], [r.err()[-1500:] for r in runs]
    loser = next(r for r in runs if r.proc.returncode == 2)
    assert "in use by another run" in loser.err()
    assert_same(out, setup.reference, setup.ids)
    assert len(json.loads(Path(out, "run.json").read_text())["runs"]) == 1


def test_stale_lock_found_by_two_runs_at_once_is_taken_over_by_one(tmp_path: Path, monkeypatch) -> None:
    """Both runs judge the dead driver's lock stale at the same moment; exactly one may take it over."""
    from rvos_batch import maskstore

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (out / "_lock.json").write_text(json.dumps({"owner": "deadbeef", "host": socket.gethostname(),
                                                "pid": int(dead.stdout), "acquired_at": "earlier"}))
    barrier = threading.Barrier(2, timeout=20)
    real_stale = maskstore._lock_is_stale

    def stale_together(holder: dict) -> bool:
        verdict = real_stale(holder)
        if holder.get("owner") == "deadbeef":  # the lock itself (the loser also judges the winner's live claim)
            barrier.wait()  # both have read the stale lock before either acts on it
        return verdict

    monkeypatch.setattr(maskstore, "_lock_is_stale", stale_together)
    outcomes: list[str] = []
    release = threading.Event()

    def contend() -> None:
        try:
            with MaskStore(str(out)).lock():
                outcomes.append("acquired")
                release.wait(20)
        except MaskStoreError as e:
            outcomes.append(f"refused: {e}")
            release.set()

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["acquired", "refused"], outcomes
    assert not (out / "_lock.json").exists() and not list(out.glob("_lock-takeover-*"))


def test_a_taker_killed_mid_takeover_does_not_block_later_runs(tmp_path: Path) -> None:
    """A run killed between claiming a stale lock and replacing it leaves the stale lock and its claim behind
    (the nightly driver-kill scenario hit it). The next run follows the dead claim, takes the lock, and cleans up;
    a claim whose taker is alive still refuses."""
    import socket

    out = tmp_path / "out"
    out.mkdir()
    dead = [int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout) for _ in range(2)]
    host = socket.gethostname()
    (out / "_lock.json").write_text(json.dumps({"owner": "driver1", "host": host, "pid": dead[0]}))
    (out / "_lock-takeover-driver1.json").write_text(json.dumps({"owner": "taker2", "host": host, "pid": dead[1]}))
    with MaskStore(str(out)).lock() as holder:
        assert json.loads((out / "_lock.json").read_text())["owner"] == holder["owner"]
        assert [p.name for p in out.glob("_lock-takeover-*")] == ["_lock-takeover-taker2.json"]  # ours
    assert not (out / "_lock.json").exists() and not list(out.glob("_lock-takeover-*"))

    (out / "_lock.json").write_text(json.dumps({"owner": "driver1", "host": host, "pid": dead[0]}))
    alive = {"owner": "taker3", "host": host, "pid": os.getpid(), "heartbeat_at": time.time()}
    (out / "_lock-takeover-driver1.json").write_text(json.dumps(alive))
    with pytest.raises(MaskStoreError, match="taking over the stale lock _lock.json right now"):
        with MaskStore(str(out)).lock():
            pass


# --------------------------------------------------------------------------------------------- storage faults


@dataclass
class Rule:
    """Affects the next ``count`` requests that ``match(method, path)``."""

    match: Callable[[str, str], bool]
    count: int
    status: int | None = 503  # answer with this error instead of forwarding (None: forward)
    delay: float = 0.0  # seconds to wait before handling
    after: bool = False  # forward first, then answer the error: the request took effect, the client sees a failure
    hits: int = 0


class FaultProxy:
    """An HTTP proxy in front of the moto server that fails, delays or answers-then-fails matching requests."""

    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status the client got)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="fault-proxy").start()

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.count > 0 and rule.match(method, path):
                    rule.count -= 1
                    rule.hits += 1
                    return rule
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                rule = proxy._take(self.command, self.path)
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                if rule is not None and rule.status is not None and not rule.after:
                    return self._error(rule.status)
                skip = ("transfer-encoding", "connection", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data, status, reply_headers = resp.read(), resp.status, resp.getheaders()
                finally:
                    conn.close()
                if rule is not None and rule.status is not None and rule.after:
                    return self._error(rule.status)
                proxy._record(self.command, self.path, status)
                self.send_response(status)
                for k, v in reply_headers:
                    if k.lower() not in (*skip, "server", "date"):
                        self.send_header(k, v)
                length = dict((k.lower(), v) for k, v in reply_headers).get("content-length", "0")
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int) -> None:
                proxy._record(self.command, self.path, status)
                code = {503: "SlowDown", 500: "InternalError"}.get(status, "ServiceUnavailable")
                data = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        "<Message>injected by the test proxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()


def _is(method: str, *parts: str) -> Callable[[str, str], bool]:
    return lambda m, path: m == method and all(p in path for p in parts)


@pytest.mark.s3
def test_lock_create_whose_reply_is_lost_counts_as_acquired(s3_bucket: str, proxy: FaultProxy, monkeypatch) -> None:
    """The conditional PUT of the lock lands but its reply is a 500; botocore retries and gets 412."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    rule = proxy.add(Rule(_is("PUT", "_lock.json"), count=1, status=500, after=True))
    store = MaskStore(f"{s3_bucket}/out")
    with store.lock() as holder:
        assert rule.hits == 1
        assert json.loads(store.fs.cat_file(store._path("_lock.json")))["owner"] == holder["owner"]
    assert not store.fs.exists(store._path("_lock.json"))


@pytest.fixture
def impatient_botocore(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """This process talks to S3 through the proxy, botocore without retries of its own, our backoffs short."""
    from rvos_batch import corpus, maskstore

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(maskstore, "COMMIT_BACKOFF_S", 0.01)
    monkeypatch.setattr(corpus, "READ_BACKOFF_S", 0.01)
    return proxy


@pytest.mark.s3
def test_commit_retries_a_failing_bucket_or_fails_without_a_marker(s3_bucket: str,
                                                                   impatient_botocore: FaultProxy) -> None:
    from test_maskstore import shard_tables

    proxy, store = impatient_botocore, MaskStore(f"{s3_bucket}/out")
    masks0, videos0 = shard_tables(0, ["a"])
    flaky = proxy.add(Rule(_is("PUT", "/out/masks/shard-00000"), count=3, status=500))
    store.commit_shard(0, masks0, videos0, {"n": 1})
    assert flaky.hits == 3
    masks1, videos1 = shard_tables(1, ["b"])
    down = proxy.add(Rule(_is("PUT", "/out/_commits/shard-00001"), count=10_000, status=500))
    with pytest.raises(MaskStoreError, match=r"_commits/shard-00001\.json: write failed 4 times"):
        store.commit_shard(1, masks1, videos1, {"n": 1})
    assert down.hits == 4
    proxy.clear()
    assert set(store.committed_shards()) == {0}  # shard 1's data is there, unmarked: invisible
    assert store.fs.exists(store._path("masks", "shard-00001.parquet"))
    assert check_invariants(store.url).equals(masks0)


@pytest.mark.s3
def test_corpus_reads_retry_a_failing_bucket(s3_bucket: str, impatient_botocore: FaultProxy) -> None:
    from rvos_batch.corpus import CorpusReader, CorpusReadError

    proxy = impatient_botocore
    make_corpus(f"{s3_bucket}/corpus", [3, 2], videos_per_file=2)
    reader = CorpusReader(f"{s3_bucket}/corpus")
    flaky = proxy.add(Rule(_is("GET", "/corpus/frames/"), count=2, status=500))
    entries = reader.list_videos()  # reads each file's footer and index columns
    assert flaky.hits == 2
    flaky = proxy.add(Rule(_is("GET", "/corpus/frames/"), count=2, status=500))
    assert [len(list(reader.iter_frames(e))) for e in entries] == [3, 2]
    assert flaky.hits == 2
    proxy.add(Rule(_is("GET", "/corpus/frames/"), count=10_000, status=500))
    reader.close()  # drop the files kept open by the reads above, whose bytes are cached: go to the bucket
    with pytest.raises(CorpusReadError, match="part-00000.parquet") as e:
        list(reader.iter_frames(entries[0]))
    assert e.value.transient, "a failing store, not a corrupt file: the caller may retry the shard"


def _s3_setup(s: Setup, s3_bucket: str) -> tuple[str, str]:
    corpus, out = f"{s3_bucket}/corpus", f"{s3_bucket}/out"
    assert make_corpus(corpus, LENGTHS, videos_per_file=2) == s.ids  # the same bytes as the local corpus
    return corpus, out


@pytest.mark.s3
def test_s3_failing_for_a_while_job_retries_and_completes(setup: Setup, s3_bucket: str, proxy: FaultProxy,
                                                          tmp_path: Path) -> None:
    """503 SlowDown and 500 on commits and frame reads, a lost lock reply, slow requests: same output.

    botocore may retry once only, so the job's own retries (commit writes, frame reads) do most of the work.
    """
    corpus, out = _s3_setup(setup, s3_bucket)
    rules = [
        proxy.add(Rule(_is("PUT", "/out/masks/"), count=3, status=503)),
        proxy.add(Rule(_is("PUT", "/out/_commits/"), count=2, status=500)),
        proxy.add(Rule(_is("PUT", "/out/videos/"), count=2, status=500, after=True)),
        proxy.add(Rule(_is("GET", "/corpus/frames/"), count=2, status=500)),
        proxy.add(Rule(_is("PUT", "/out/_lock.json"), count=1, status=500, after=True)),
        proxy.add(Rule(lambda m, p: True, count=20, status=None, delay=0.2)),
    ]
    run = start_label(corpus, out, setup.model, tmp_path / "logs",
                      env={"AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "2", "RVOS_COMMIT_BACKOFF_S": "0.2",
                           "RVOS_READ_BACKOFF_S": "0.2"})
    assert finish(run) == 0, run.err()[-3000:]
    assert [r.hits for r in rules] == [3, 2, 2, 2, 1, 20], "every injected fault was hit"
    assert_same(out, setup.reference, setup.ids)
    assert "(0 already done, 5 this run, 0 failed)" in run.out(), run.out()


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("what", ["masks", "_commits"])
def test_s3_failing_too_long_fails_the_shard_cleanly(setup: Setup, s3_bucket: str, proxy: FaultProxy,
                                                     what: str, tmp_path: Path) -> None:
    """Every write of shard 1's data (or its marker) fails: shard 1 ends failed, nothing half-visible; a rerun
    after the outage completes it."""
    corpus, out = _s3_setup(setup, s3_bucket)
    proxy.add(Rule(_is("PUT", f"/out/{what}/shard-00001"), count=10_000, status=500))
    run = start_label(corpus, out, setup.model, tmp_path / "logs",
                      "--max-shard-attempts", "2",
                      env={"AWS_ENDPOINT_URL": proxy.url, "RVOS_COMMIT_ATTEMPTS": "2", "RVOS_COMMIT_BACKOFF_S": "0.2"})
    assert finish(run) == 1, run.err()[-3000:]
    assert f"{what}/shard-00001" in run.out() and "write failed 2 times" in run.out(), run.out()
    store = MaskStore(out)
    assert set(store.committed_shards()) == {0, 2, 3, 4}
    assert set(store.failed_shards()) == {1}
    if what == "_commits":  # the data landed, the marker never did: still invisible
        assert store.fs.exists(store._path("masks", "shard-00001.parquet"))
    check_store(out, [v for i, v in enumerate(setup.ids) if i != 1])
    proxy.clear()
    run = start_label(corpus, out, setup.model, tmp_path / "logs",
                      env={"AWS_ENDPOINT_URL": proxy.url})
    assert finish(run) == 0, run.err()[-3000:]
    assert "(4 already done, 1 this run, 0 failed)" in run.out()
    assert_same(out, setup.reference, setup.ids)


@pytest.mark.s3
@pytest.mark.slow
def test_s3_two_jobs_at_once(setup: Setup, s3_bucket: str, tmp_path: Path) -> None:
    corpus, out = _s3_setup(setup, s3_bucket)
    runs = [start_label(corpus, out, setup.model, tmp_path / "logs") for _ in range(2)]
    codes = sorted(finish(r) for r in runs)
    assert codes == [0, 2], [r.err()[-1500:] for r in runs]
    assert_same(out, setup.reference, setup.ids)
