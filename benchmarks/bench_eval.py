"""Benchmark rvos_batch.evaluate on all real DAVIS 2017 val masks; writes the "## Evaluation" section of
benchmarks/RESULTS.md.

Run:  .venv/bin/python benchmarks/bench_eval.py [--official-python PY --official-src DIR] [--official-videos N]
      [--no-write]

Ground truth: the 1999 masks of shared/data/davis2017-val-osvos (beside the repository, or $RVOS_SHARED_DATA).
Predictions: seeded perturbations (drifting shifts, erosion, dilation, lost stretches of frames); for the
unsupervised protocol the object ids are shuffled among 20 proposal ids and every unused id is an extra moving
box or ellipse, so every video has the maximum of 20 proposals (the costliest case for the official package,
which dilates both masks of all 20 x objects pairs on every frame). Both are written as palette PNGs in a DAVIS
layout under a temporary folder; our timings include reading the PNGs.

With ``--official-python`` (a Python with numpy, scipy, opencv, scikit-image, pandas, tqdm and Pillow) and
``--official-src`` (a checkout of github.com/davisvideochallenge/davis2017-evaluation, never part of this
repository), the official package is timed on the same folders (with ``--official-videos N``, on every k-th video
so that about N are used, and the full-set time is extrapolated by scored frames x (proposal, object) pairs x
pixels) and its global figures are compared with ours on the same videos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rvos_batch import imaging
from rvos_batch.evaluate import SUMMARY_KEYS, evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Evaluation"
PROTOCOLS = ("semi-supervised", "unsupervised")
N_PROPOSALS = 20
_CROSS = np.zeros((3, 3, 3), dtype=bool)
_CROSS[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]

OFFICIAL_DRIVER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from davis2017.evaluation import DAVISEvaluation
t0 = time.perf_counter()
res = DAVISEvaluation(davis_root=sys.argv[2], task=sys.argv[3], gt_set='val').evaluate(sys.argv[4])
seconds = time.perf_counter() - t0
J, F = res['J'], res['F']
print(json.dumps({'seconds': seconds, 'J-Mean': float(np.mean(J['M'])), 'J-Recall': float(np.mean(J['R'])),
    'J-Decay': float(np.mean(J['D'])), 'F-Mean': float(np.mean(F['M'])), 'F-Recall': float(np.mean(F['R'])),
    'F-Decay': float(np.mean(F['D'])), 'J&F-Mean': float((np.mean(J['M']) + np.mean(F['M'])) / 2)}))
"""


def data_dir() -> Path:
    env = os.environ.get("RVOS_SHARED_DATA")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "davis2017-val-osvos"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}"


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = m[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def perturb(gt: np.ndarray, protocol: str, rng: np.random.Generator) -> np.ndarray:
    """A seeded imperfect prediction of the (T, H, W) ids ``gt``."""
    t_n, h, w = gt.shape
    k_n = int(gt.max())
    new_ids = rng.permutation(N_PROPOSALS) + 1 if protocol == "unsupervised" else np.arange(1, k_n + 1)
    out = np.zeros_like(gt)
    if protocol == "unsupervised":  # extra proposals first, so objects paint over them
        yy, xx = np.mgrid[0:h, 0:w]
        for pid in new_ids[k_n:]:
            bh, bw = int(rng.integers(h // 20, h // 4)), int(rng.integers(w // 20, w // 4))
            y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            vy, vx = rng.uniform(-2, 2, size=2)
            ellipse = rng.random() < 0.5
            for t in range(t_n):
                cy, cx = y0 + bh / 2 + vy * t, x0 + bw / 2 + vx * t
                if ellipse:
                    m = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1
                else:
                    m = (np.abs(yy - cy) <= bh / 2) & (np.abs(xx - cx) <= bw / 2)
                out[t][m] = pid
    for k in range(1, k_n + 1):
        m = gt == k
        kind = int(rng.integers(0, 4))
        if kind == 0:
            dy, dx = (int(v) for v in rng.integers(-10, 11, size=2))
            m = np.stack([_shift(m[t], dy + t // 10, dx) for t in range(t_n)])
        elif kind == 1:
            m = ndimage.binary_dilation(m, _CROSS, iterations=int(rng.integers(1, 6)))
        elif kind == 2:
            m = ndimage.binary_erosion(m, _CROSS, iterations=int(rng.integers(1, 6)))
        else:
            a = int(rng.integers(0, t_n // 2))
            m = m.copy()
            m[a : a + int(rng.integers(5, 20))] = False
        out[m] = new_ids[k - 1]
    return out


def _write(folder: Path, ids: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(ids):
        (folder / f"{t:05d}.png").write_bytes(imaging.encode_palette_png(frame))


def build(work: Path, seed: int) -> dict[str, tuple[int, int, int]]:
    """DAVIS layout under ``work``; returns video -> (frames, objects, height*width)."""
    src = data_dir()
    if not src.is_dir():
        sys.exit(f"real masks not found at {src} (set RVOS_SHARED_DATA to the shared/data folder)")
    rng = np.random.default_rng(seed)
    info = {}
    videos = sorted(p.name for p in src.iterdir() if p.is_dir())
    sets = work / "davis" / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("".join(f"{v}\n" for v in videos))
    for video in videos:
        files = sorted((src / video).glob("*.png"))
        gt = np.stack([imaging.read_palette_png(f) for f in files])
        for ann in ("Annotations", "Annotations_unsupervised"):
            (work / "davis" / ann / "480p").mkdir(parents=True, exist_ok=True)
            (work / "davis" / ann / "480p" / video).symlink_to(src / video)
        jpg = work / "davis" / "JPEGImages" / "480p" / video
        jpg.mkdir(parents=True)
        for f in files:
            Image.new("RGB", (8, 8)).save(jpg / f"{f.stem}.jpg")
        for protocol in PROTOCOLS:
            _write(work / f"pred-{protocol}" / video, perturb(gt, protocol, rng))
        info[video] = (gt.shape[0], int(gt.max()), gt.shape[1] * gt.shape[2])
    return info


def time_ours(work: Path, protocol: str, workers: int, videos: Sequence[str] | None = None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = evaluate(str(work / f"pred-{protocol}"), str(work / "davis"), protocol, videos=videos, workers=workers)
    return time.perf_counter() - t0, result.summary()


def time_official(
    python: str, src: str, work: Path, protocol: str, videos: Sequence[str]
) -> tuple[float, float, dict[str, float]]:
    """(wall seconds incl. start-up, seconds inside evaluate(), global figures) of the official package."""
    sub = work / f"official-{protocol}"
    if not sub.exists():  # the package reads ImageSets/2017/val.txt: a layout listing only ``videos``
        (sub / "ImageSets" / "2017").mkdir(parents=True)
        (sub / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{v}\n" for v in videos))
        for name in ("Annotations", "Annotations_unsupervised", "JPEGImages"):
            (sub / name).symlink_to(work / "davis" / name)
    pred = work / f"pred-{protocol}"
    t0 = time.perf_counter()
    run = subprocess.run(
        [python, "-c", OFFICIAL_DRIVER, src, str(sub), protocol, str(pred)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"official package failed:\n{run.stderr[-3000:]}")
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    return wall, figures.pop("seconds"), figures


def write_section(text: str) -> None:
    """Replace (or append) the '## Evaluation' section of RESULTS.md, leaving every other section as it is."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Evaluation\n.*?(?=^## |\Z)", re.M | re.S)
    section = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: section, old, count=1) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(new.rstrip("\n") + "\n")


def _work_units(info: dict[str, tuple[int, int, int]], protocol: str, videos: Sequence[str]) -> float:
    """Scored frames x (proposals x objects) x pixels: what the official package's time grows with."""
    total = 0.0
    for v in videos:
        frames, objects, pixels = info[v]
        scored = frames - 2 if protocol == "semi-supervised" else frames
        pairs = objects if protocol == "semi-supervised" else N_PROPOSALS * objects
        total += scored * pairs * pixels
    return total


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official-python", help="Python that can import the official package's dependencies")
    p.add_argument("--official-src", help="folder holding the official package (the davis2017/ folder's parent)")
    p.add_argument(
        "--official-videos", type=int, default=0, help="time the official package on about N videos spread over the set"
    )
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)

    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        info = build(work, args.seed)
        print(f"built the layout in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        videos = sorted(info)
        frames = sum(v[0] for v in info.values())
        objects = sum(v[1] for v in info.values())
        rows = []
        notes = []
        for protocol in PROTOCOLS:
            one, figures = time_ours(work, protocol, 1)
            many, again = time_ours(work, protocol, workers)
            assert again == figures
            row = {"protocol": protocol, "ours_1": one, "ours_n": many, "figures": figures}
            if args.official_python and args.official_src:
                step = -(-len(videos) // args.official_videos) if args.official_videos else 1
                subset = videos[::step]  # spread over the set
                wall, inside, theirs = time_official(args.official_python, args.official_src, work, protocol, subset)
                _, ours_subset = time_ours(work, protocol, workers, subset)
                diff = max(abs(ours_subset[k] - theirs[k]) for k in SUMMARY_KEYS)
                scale = _work_units(info, protocol, videos) / _work_units(info, protocol, subset)
                row.update(official=wall, official_full=wall * scale, subset=len(subset), diff=diff)
                notes.append(
                    f"{protocol}: official package on {len(subset)} videos: {wall:.1f} s wall "
                    f"({inside:.1f} s inside evaluate()); largest difference of a global figure from ours on "
                    f"the same videos: {diff:.1e}"
                )
            rows.append(row)
            print(row, file=sys.stderr)

    lines = [
        SECTION,
        "",
        "DAVIS-2017 J and F (`rvos_batch/evaluate.py`) against the official davis2017-evaluation package, on all "
        f"{frames} real DAVIS 2017 val masks ({len(videos)} videos, {objects} objects) of shared/data; predictions "
        "are seeded perturbations, with 20 proposals per video for the unsupervised protocol. Times are wall "
        "clock and include reading the palette PNGs.",
        "",
        f"- Machine: {machine()} (shared with other jobs: times are indicative)",
        f"- Command: `.venv/bin/python benchmarks/bench_eval.py{''.join(' ' + a for a in (argv or sys.argv[1:]))}`",
        "",
        f"| protocol | ours, 1 thread (s) | ours, {workers} threads (s) | official (s) | speed-up (1 thread) "
        "| J&F-Mean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "official" in r:
            full = r["official_full"]
            est = "" if r["subset"] == len(videos) else " (est.)"
            official = f"{full:.0f}{est}"
            speed = f"{full / r['ours_1']:.0f}x"
        else:
            official, speed = "not run", "-"
        lines.append(
            f"| {r['protocol']} | {r['ours_1']:.1f} | {r['ours_n']:.1f} | {official} | {speed} "
            f"| {r['figures']['J&F-Mean']:.4f} |"
        )
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
        lines.append(
            "- (est.): the official time on a subset of videos, scaled by scored frames x (proposal, object) "
            "pairs x pixels of the full set over the subset."
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"\nwrote the '{SECTION}' section of {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
