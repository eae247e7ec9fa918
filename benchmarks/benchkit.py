"""Shared helpers of the speed benchmarks: the machine, the two model configurations, a corpus of real JPEGs,
timing of the model alone, and writing one section of benchmarks/RESULTS.md.

Benchmarks import this module from their own folder (``python benchmarks/bench_X.py`` puts it on the path).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rvos_batch.model.checkpoint import load_checkpoint, save_checkpoint
from rvos_batch.model.config import RVOSConfig
from rvos_batch.model.rvos import RVOS
from rvos_batch.predictor import BatchSession, PredictConfig
from rvos_batch.zoo import MODELS_DIR

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# The paper's configuration (Ventura et al. 2019: ResNet-101, H = 128, 10 slots, 256x448) and the shipped one.
PAPER = RVOSConfig(backbone="resnet101", hidden=128, num_slots=10, mode="zero-shot", recurrence="ST",
                   input_size=(256, 448))
SHIPPED = {
    "zero-shot": RVOSConfig(backbone="mobilenet_v2", hidden=64, num_slots=5, mode="zero-shot", recurrence="ST",
                            input_size=(128, 224)),
    "one-shot": RVOSConfig(backbone="mobilenet_v2", hidden=64, num_slots=5, mode="one-shot", recurrence="ST",
                           input_size=(240, 424), refine=True),
}
SHIPPED_FILES = {"zero-shot": "rvos-mnv2-synth-zs.pt", "one-shot": "rvos-mnv2-synth-os.pt"}


def machine() -> str:
    """CPU model, visible CPUs, load, memory, Python/torch versions and the GPU, for the results file."""
    cpu = "unknown CPU"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    gpu = "no GPU (CUDA not available)"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"GPU {p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return (f"{cpu}, {os.cpu_count()} CPUs visible{mem}, load average {load} at start (shared machine), "
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op thread(s))")


def command(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return f"nice -n 19 .venv/bin/python benchmarks/{script}" + "".join(f" {a}" for a in args)


def write_section(title: str, text: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, leaving every other section as it is."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    section = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: section, old, count=1) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}.tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    os.replace(tmp, RESULTS)  # other benchmarks update their own sections of the same file


def shipped_model(mode: str, device: str = "cpu") -> tuple[RVOS, str]:
    """The shipped checkpoint of ``mode`` if it is in rvos_batch/assets/models, else an untrained model of the
    shipped configuration. Returns (model, description). Inference speed does not depend on the weights; on the
    CPU, training speed can (a trained model's vanishing gradients are denormal floats: see bench_train_loading.py)."""
    path = MODELS_DIR / SHIPPED_FILES[mode]
    if path.is_file():
        model, _, _ = load_checkpoint(path, map_location=device)
        return model.eval(), f"shipped checkpoint {path.name}"
    return untrained(SHIPPED[mode], device), "untrained model of the shipped configuration (checkpoint absent)"


def untrained(config: RVOSConfig, device: str = "cpu", seed: int = 0, head_bias: float = 1.0) -> RVOS:
    """A seeded untrained model; a positive head bias makes it emit masks (so masks and RLE are not trivial)."""
    torch.manual_seed(seed)
    model = RVOS(config)
    with torch.no_grad():
        bias = model.decoder.head.bias
        assert bias is not None
        bias.fill_(head_bias)
    return model.to(device).eval()


def save_model(model: RVOS, path: Path) -> str:
    save_checkpoint(path, model, model.config, {"note": "benchmark model"})
    return str(path)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def model_alone_fps(model: RVOS, config: PredictConfig, batch: int, frames: torch.Tensor, steps: int,
                    warmup: int = 2, objects: int | None = None) -> float:
    """Frames/s of the model alone (see :func:`model_alone`)."""
    return model_alone(model, config, batch, frames, steps, warmup, objects)[0]


def model_alone(model: RVOS, config: PredictConfig, batch: int, frames: torch.Tensor, steps: int,
                warmup: int = 2, objects: int | None = None) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) of the model alone: ``batch`` videos stepped together through a BatchSession
    (upload, model step, state update, and for one-shot the appearance check when ``config.appearance`` is set;
    no decoding, no masks). frames: (T, 3, h, w) uint8 preprocessed frames
    cycled through. One-shot: ``objects`` prompted objects per video (slots decoded = objects). CPU time is this
    process's, all threads."""
    session = BatchSession(model, config, capacity=batch)
    h, w = model.config.input_size
    for row in range(batch):
        prompts = None
        if model.config.one_shot:
            k = objects or model.config.num_slots
            prompts = {0: {obj + 1: _blob((h, w), obj, k) for obj in range(k)}}
        session.add(row, f"v{row}", (h, w), prompts)
    t_frames = frames.shape[0]

    def step(i: int) -> None:
        session.step_async({row: (i, frames[(i + row) % t_frames]) for row in range(batch)})

    for i in range(warmup):
        step(i)
    sync(config.device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(config.device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return batch * steps / wall, cpu / (batch * steps) * 1e3


def _blob(size: tuple[int, int], k: int, n: int) -> Any:
    import numpy as np

    h, w = size
    m = np.zeros(size, dtype=bool)
    x0 = int(w * k / max(n, 1))
    m[h // 4 : 3 * h // 4, x0 : x0 + max(1, w // (2 * max(n, 1)))] = True
    return m


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def fake_aws_env(endpoint_url: str, tmp: Path) -> Iterator[None]:
    """Fake credentials, no AWS config files, and ``endpoint_url`` (a moto server) in the environment; every AWS
    variable is restored on exit, including any the body changes."""
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_CONFIG_FILE=str(tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
                      AWS_ENDPOINT_URL=endpoint_url)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def add_threads_option(p: Any) -> None:
    """``--threads N`` (default 1: a CPU actor with 1 CPU runs 1); apply it with :func:`apply_threads`."""
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: a CPU actor with 1 CPU runs 1; 0 keeps torch's default)")


def add_model_alone_options(p: Any) -> None:
    """``--steps``, ``--repeat`` and ``--batch``: the options of the benchmarks that time :func:`model_alone`."""
    p.add_argument("--steps", type=int, default=12, help="model steps per timed run (default 12)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per setting; the best is kept (default 3)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="videos stepped together (default 1 4)")


def parse(p: Any, argv: Sequence[str] | None) -> Any:
    """Add the options every benchmark has (``--threads``, ``--no-write``), parse ``argv`` and apply ``--threads``."""
    add_threads_option(p)
    p.add_argument("--no-write", action="store_true", help="print the figures without writing RESULTS.md")
    args = p.parse_args(argv)
    apply_threads(args)
    return args


def apply_threads(args: Any) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
