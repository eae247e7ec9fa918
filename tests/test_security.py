"""Security: checkpoints never unpickle code, credentials never leave memory, the Ray dashboard stays private.

- Checkpoints (rvos_batch.model.checkpoint, the backbone loader in model/encoder.py) load with
  ``torch.load(weights_only=True)``: a pickle whose ``__reduce__`` would run code is refused and its payload
  never runs, through the library, ``rvos-batch label --model`` and the backbone loader alike; no other module
  deserialises with pickle (an AST scan). A tampered file is refused by ``expected_sha256``
  (tests/test_checkpoint.py::test_tampered_truncated_and_unsafe_files_are_refused), and a checkpoint changed
  between two runs into one OUT is refused by the run's fingerprint.
- Credentials: a real labeling run on Ray against a moto S3 server with fake keys in the environment, in
  ``--storage-options`` inline and in an ``@FILE``, at debug verbosity: no key, secret or session token in
  stdout, stderr, any object of OUT (run.json keeps '***'), or any file Ray wrote (its session logs with the
  actors' output); nor in the errors for a wrong endpoint, a bad option or malformed JSON.
- Dashboard: README's advice holds on a real ``ray start``: with ``--dashboard-host=127.0.0.1`` the dashboard
  and job API listen on loopback only, and with ``RAY_AUTH_MODE=token`` they answer 401 without the token,
  403 with a wrong one. Without RAY_AUTH_MODE a fresh ``ray start --head`` (no ~/.ray/auth_token) runs with
  authentication off, which is why the cluster configs must set it (test_cluster_configs_turn_token_auth_on).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from jobkit import REPO, make_corpus, tiny_model

from rvos_batch.errors import CheckpointError, MaskStoreError
from rvos_batch.model.checkpoint import file_sha256, load_checkpoint

# --------------------------------------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling this creates a directory: the observable trace of code run by a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_files(tmp: Path, marker: Path) -> dict[str, Path]:
    files = {}
    zipped = io.BytesIO()  # torch's zip format with a code-running object next to plausible contents
    torch.save({"format": "rvos_batch.checkpoint", "version": 1, "config": "{}", "state_dict": {},
                "extra": {"x": _Payload(marker)}}, zipped)
    files["torch zip"] = tmp / "evil-zip.pt"
    files["torch zip"].write_bytes(zipped.getvalue())
    files["plain pickle"] = tmp / "evil-pickle.pt"
    files["plain pickle"].write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    return files


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    from rvos_batch.model.encoder import Encoder, load_backbone_weights

    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works when unpickled for real ...
    assert marker.is_dir()
    marker.rmdir()
    for kind, path in _evil_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError, match="not a valid weights-only torch file"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="not a valid weights-only torch file"):
            load_checkpoint(path, expected_sha256=file_sha256(path))  # a matching digest does not make it safe
        encoder = Encoder("mobilenet_v2", hidden=16)
        with pytest.raises(CheckpointError, match="not a weights-only torch checkpoint"):
            load_backbone_weights(encoder, path)
        assert not marker.exists(), f"{kind}: the pickle's code ran"


def test_label_refuses_a_malicious_model_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rvos_batch.cli import main

    marker = tmp_path / "payload-ran"
    evil = _evil_files(tmp_path, marker)["torch zip"]
    corpus = str(tmp_path / "corpus")
    make_corpus(corpus, [2])
    rc = main(["label", corpus, str(tmp_path / "out"), "--model", str(evil), "--no-progress", "--no-preview"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a valid weights-only torch file" in err and "Traceback" not in err, err
    assert not marker.exists()
    assert not (tmp_path / "out" / "masks").exists()


def test_no_unsafe_deserialisation_in_the_package() -> None:
    """Every torch.load passes weights_only=True; no pickle/marshal/shelve/yaml.load/np.load(allow_pickle)."""
    problems = []
    for path in sorted((REPO / "rvos_batch").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "marshal", "shelve", "dill", "cloudpickle") for n in names):
                    problems.append(f"{path.name}:{node.lineno}: imports {names}")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords}
            if (owner, node.func.attr) == ("torch", "load"):
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
            if (owner, node.func.attr) in (("np", "load"), ("numpy", "load")):
                flag = kwargs.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{path.name}:{node.lineno}: np.load with allow_pickle")
            if (owner, node.func.attr) in (("yaml", "load"), ("yaml", "unsafe_load")):
                problems.append(f"{path.name}:{node.lineno}: yaml.{node.func.attr}")
    assert not problems, problems


def test_checkpoint_changed_between_runs_is_refused(tmp_path: Path) -> None:
    """OUT records the model's sha256: resuming with a modified checkpoint file is refused, naming it."""
    from rvos_batch.job.config import LabelConfig
    from rvos_batch.job.driver import run_job
    from rvos_batch.job.worker import run_in_process

    corpus = str(tmp_path / "corpus")
    make_corpus(corpus, [2, 2])
    model = tiny_model(tmp_path / "m.pt")
    cfg = LabelConfig(corpus=corpus, out=str(tmp_path / "out"), model=model, videos_per_shard=1)
    run_in_process(cfg)  # every shard committed without Ray ...
    assert run_job(cfg, progress=False).shards_skipped == 2  # ... so the driver records run.json, starts nothing
    tampered, config, extra = load_checkpoint(model)
    with torch.no_grad():
        tampered.decoder.head.bias.add_(0.5)
    from rvos_batch.model.checkpoint import save_checkpoint

    save_checkpoint(model, tampered, config, extra)
    with pytest.raises(MaskStoreError, match="model_sha256"):
        run_job(cfg, progress=False)


# --------------------------------------------------------------------------------------------- credentials


KEY_ENV, SECRET_ENV = "AKIAENVIRONMENTFAKE1", "envSecretFake/abcdefghijklmnopqrstuvwxyz01"
KEY_OPT, SECRET_OPT = "AKIAOPTIONSFAKE00002", "optSecretFake/ZYXWVUTSRQPONMLKJIHGFEDCBA98"
TOKEN = "sessionTokenFake//+AbCdEfGhIjKlMnOpQrStUvWxYz0123456789=="
SECRETS = (SECRET_ENV, SECRET_OPT, TOKEN)  # access key ids are not secret, but they are checked too
EVERYTHING = (*SECRETS, KEY_ENV, KEY_OPT)


def _leaks(text: str | bytes, values: tuple[str, ...] = EVERYTHING) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [v for v in values if v.encode() in data]


def _scan_tree(root: str) -> list[tuple[str, str]]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            hits += [(path, v) for v in _leaks(data)]
    return hits


def _kill_session(sid: int) -> None:
    for _ in range(100):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[3]) == sid and fields[0] != "Z":
                        pids.append(int(entry))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@pytest.mark.ray
@pytest.mark.s3
def test_no_credential_reaches_output_logs_or_errors(s3_server, s3_bucket: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, out = f"{s3_bucket}/corpus", f"{s3_bucket}/out"
    make_corpus(corpus, [3, 2], videos_per_file=2)
    model = tiny_model(tmp_path / "m.pt")
    options = {"key": KEY_OPT, "secret": SECRET_OPT, "token": TOKEN,
               "client_kwargs": {"region_name": "us-east-1", "aws_session_token": TOKEN}}
    opts_file = tmp_path / "s3.json"
    opts_file.write_text(json.dumps(options))
    ray_tmp = tempfile.mkdtemp(prefix="rvs", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_ACCESS_KEY_ID=KEY_ENV, AWS_SECRET_ACCESS_KEY=SECRET_ENV, AWS_SESSION_TOKEN=TOKEN,
               RAY_TMPDIR=ray_tmp)
    cmd = [sys.executable, "-m", "rvos_batch", "-v", "label", corpus, out, "--model", model, "--num-actors", "1",
           "--videos-per-shard", "1", "--storage-options", f"@{opts_file}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        _kill_session(proc.pid)
    try:
        assert proc.returncode == 0, stderr[-3000:]
        assert "DEBUG" in stderr and "preview" in stdout  # debug logging was on, the run went to the end
        assert _leaks(stdout) == [] and _leaks(stderr) == []
        ray_hits = _scan_tree(ray_tmp)
        assert any("session_" in p for p in _ray_files(ray_tmp)), "Ray's session logs were scanned"
        assert ray_hits == []
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    from rvos_batch.storage import get_fs

    fs, root = get_fs(out)
    objects = fs.find(root)
    assert any(o.endswith("run.json") for o in objects) and any(o.endswith("preview.png") for o in objects)
    for key in objects:
        assert _leaks(fs.cat_file(key)) == [], key
    run = json.loads(fs.cat_file(f"{root}/run.json"))
    assert run["storage_options"]["secret"] == "***" and run["storage_options"]["client_kwargs"] == {
        "region_name": "us-east-1", "aws_session_token": "***"}

    # errors: a wrong endpoint, an option s3fs does not take, malformed JSON, a missing @file, and status
    from rvos_batch import corpus as corpus_module
    from rvos_batch.cli import main

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail fast: the messages are what is checked here
    monkeypatch.setattr(corpus_module, "READ_BACKOFF_S", 0.01)

    bad = [
        {**options, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"},
        {**options, "no_such_option": 1},
    ]
    for opts in bad:
        rc = main(["label", corpus, f"{s3_bucket}/out-bad", "--model", model, "--storage-options", json.dumps(opts)])
        err = capsys.readouterr().err
        assert rc == 2 and "rvos-batch label: error:" in err and "Traceback" not in err, err
        assert _leaks(err) == [], err
    for text in (json.dumps(options)[:-3], f"@{tmp_path / 'missing.json'}"):
        rc = main(["status", out, "--storage-options", text])
        err = capsys.readouterr().err
        assert rc == 2 and _leaks(err) == [], err
    assert main(["status", out, "--json", "--storage-options", f"@{opts_file}"]) == 0
    assert _leaks(capsys.readouterr().out) == []


def _ray_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redact_masks_nested_and_url_credentials() -> None:
    from rvos_batch.storage import parse_storage_options, redact

    options = {"key": KEY_OPT, "anon": False, "client_kwargs": {"aws_secret_access_key": SECRET_OPT,
               "endpoint_url": f"https://user:{SECRET_OPT}@minio.local:9000"}, "profiles": [{"token": TOKEN}]}
    text = json.dumps(redact(options))
    assert _leaks(text) == [] and "minio.local:9000" in text and '"anon": false' in text
    with pytest.raises(Exception, match="not valid JSON") as e:
        parse_storage_options(json.dumps(options)[:-5])
    assert _leaks(str(e.value)) == []


# --------------------------------------------------------------------------------------------- dashboard


def _http_status(url: str, token: str | None = None) -> int | None:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, p = fields[1].split(":")
            if fields[3] == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def _ray_head(tmp: Path, auth: bool) -> tuple[subprocess.Popen, int, str, str]:
    bindir = Path(sys.executable).parent
    token = secrets.token_hex(16)
    port, dash = _closed_port(), _closed_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{bindir}:{env['PATH']}", HOME=str(tmp))  # a fresh machine: no ~/.ray/auth_token
    if auth:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    temp_dir = tempfile.mkdtemp(prefix="rvd", dir="/tmp")
    proc = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while _http_status(f"http://127.0.0.1:{dash}/api/jobs/", token) != 200:
        if time.monotonic() > deadline or proc.poll() is not None:
            _stop_head(proc, temp_dir)
            raise AssertionError(f"ray start did not bring the dashboard up (rc {proc.poll()})")
        time.sleep(0.5)
    return proc, dash, token, temp_dir


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """Kill that head's session only (never `ray stop`: it would stop every Ray on the machine)."""
    import shutil

    _kill_session(proc.pid)
    proc.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
def test_dashboard_is_local_and_the_job_api_needs_the_token(tmp_path: Path) -> None:
    """README: `--dashboard-host=127.0.0.1` and `RAY_AUTH_MODE=token`; checked on a real head node."""
    proc, dash, token, temp_dir = _ray_head(tmp_path / "home-a", auth=True)
    try:
        assert _listening(dash) and _listening(dash) <= LOOPBACK, _listening(dash)
        for path in ("/api/jobs/", "/api/version", "/api/v0/actors"):
            url = f"http://127.0.0.1:{dash}{path}"
            assert (_http_status(url), _http_status(url, "0" * 32), _http_status(url, token)) == (401, 403, 200)
    finally:
        _stop_head(proc, temp_dir)
    proc, dash, _, temp_dir = _ray_head(tmp_path / "home-b", auth=False)
    try:  # the reason the configs must set RAY_AUTH_MODE: a fresh `ray start --head` leaves the job API open
        assert _http_status(f"http://127.0.0.1:{dash}/api/jobs/") == 200
    finally:
        _stop_head(proc, temp_dir)


def test_readme_says_how_to_reach_the_dashboard_safely() -> None:
    readme = (REPO / "README.md").read_text()
    for advice in ("RAY_AUTH_MODE=token", "--dashboard-host=127.0.0.1", "port-forward", "never by opening port 8265",
                   "weights_only=True", "expected_sha256"):
        assert advice in readme, advice
    launcher = (REPO / "cluster" / "ray-cluster.yaml").read_text()
    start = next(line for line in launcher.splitlines() if "ray start --head" in line)
    assert "--dashboard-host=127.0.0.1" in start
    rayjob = (REPO / "cluster" / "rayjob.yaml").read_text()
    for exposure in ("LoadBalancer", "NodePort", "Ingress", "hostNetwork"):
        assert exposure not in rayjob, f"cluster/rayjob.yaml exposes the head: {exposure}"
    assert "port-forward" in rayjob


def test_cluster_configs_turn_token_auth_on() -> None:
    launcher = (REPO / "cluster" / "ray-cluster.yaml").read_text()
    for line in launcher.splitlines():
        if "ray start" in line:
            assert "RAY_AUTH_MODE=token" in line, line
    assert "RAY_AUTH_MODE" in (REPO / "cluster" / "rayjob.yaml").read_text()
