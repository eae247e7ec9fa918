"""Build a corpus from a dataset folder: CORPUS/frames (FRAME_SCHEMA) and, where annotations exist,
CORPUS/prompts (MASK_SCHEMA: each object's mask on the first frame where it appears, score 1.0).

Source layouts (``format``; detected when None):

- ``davis``: DAVIS-2017, ``JPEGImages/480p/<video>/*.jpg`` and ``Annotations/480p/<video>/*.png``. When
  ``ImageSets/2017/*.txt`` exists, only the listed videos are ingested (all lists unioned, or ``split``).
- ``youtube-vos``: YouTube-VOS 2018/2019, ``JPEGImages/<video>/*.jpg``, ``Annotations/<video>/*.png`` and an
  optional ``meta.json``. SRC is the split folder (``train``, ``valid``) itself, or the dataset root with
  ``split`` naming the folder (optional when the root holds one split only). YouTube-VOS annotates only
  some frames: frames are kept as they are, annotation files are matched to frames by name.
- ``frames``: ``<video>/*.{jpg,jpeg,png}``.
- ``video``: ``*.{mp4,webm,mov,mkv,avi}`` (or SRC one such file), decoded with PyAV, optionally resampled to
  ``fps`` and shrunk so the longer side is at most ``max_side``, stored as JPEG.

Frames of a video are sorted by file name in natural order (``f2`` before ``f10``); ``frame_index`` is the
position in that order, ``source`` the path relative to SRC (``clip.mp4#t=1.200`` for decoded video).
Image bytes of image layouts are copied untouched, after a full (cheap) decode proves each is a complete
image. Annotation pixel values are object ids; 0 is background and 255 is void (the DAVIS convention),
neither becomes a prompt. Everything is listed and checked before the frames are committed: a missing folder
or broken image raises an error naming its path, and nothing is left in OUT. A video without frames (an empty
frame folder, a video file without a video stream or a decodable frame) is such an error too, not skipped: an
ingest is all or nothing, so the corpus never silently lacks a video; remove or fix it and rerun.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from rvos_batch.corpus import CorpusWriter
from rvos_batch.errors import ImageDecodeError, InputLayoutError
from rvos_batch.imaging import DEFAULT_MAX_PIXELS, check_image, encode_jpeg, fit_size, read_palette_png
from rvos_batch.storage import get_fs, is_local, join

log = logging.getLogger(__name__)

FORMATS = ("davis", "youtube-vos", "frames", "video")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
ANNOTATION_EXTS = (".png",)
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")
VOID_ID = 255
READ_THREADS = 8  # object stores: concurrent GETs hide per-request latency
READ_AHEAD = 32  # frames fetched ahead of the writer (bounded memory)


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest and how. ``storage_options`` apply to SRC and OUT alike."""

    src: str
    out: str
    format: str | None = None  # one of FORMATS; None: detect from the layout
    videos_per_file: int = 16
    fps: float | None = None  # video only: keep about this many frames per second
    max_side: int | None = None  # video only: shrink so that max(width, height) <= max_side
    jpeg_quality: int = 90  # video only
    split: str | None = None  # davis: ImageSets/2017/<split>.txt; youtube-vos: <split>/ under the root
    resolution: str = "480p"  # davis: JPEGImages/<resolution>
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise InputLayoutError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.videos_per_file < 1:
            raise InputLayoutError(f"videos_per_file must be >= 1, got {self.videos_per_file}")
        if self.fps is not None and not self.fps > 0:
            raise InputLayoutError(f"fps must be > 0, got {self.fps}")
        if self.max_side is not None and self.max_side < 1:
            raise InputLayoutError(f"max_side must be >= 1, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputLayoutError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class IngestResult:
    format: str
    num_videos: int
    num_frames: int
    num_prompts: int  # prompt rows (objects) written, 0 when the layout has no annotations
    frame_files: tuple[str, ...]
    prompts: str | None  # URL of the prompts dataset, None when not written


@dataclass(frozen=True)
class _ImageVideo:
    """One video of an image layout: its frame files in order, and annotation files by frame index."""

    video_id: str
    frames: tuple[str, ...]
    annotations: tuple[tuple[int, str], ...] | None  # None: the layout has no annotations for it


@dataclass(frozen=True)
class _FileVideo:
    video_id: str
    path: str


# --------------------------------------------------------------------------------------------- listing


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers: f2 < f10; ties broken by the plain name."""
    parts = re.split(r"(\d+)", name)
    return (tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name)


class _Source:
    """Read-only view of SRC through fsspec, with paths shown to the user as they gave them."""

    def __init__(self, url: str, storage_options: Mapping[str, Any]) -> None:
        self.url = url.rstrip("/") if url not in ("/", "") else url
        self.fs, self.root = get_fs(url, dict(storage_options))
        self.root = self.root.rstrip("/") or self.root

    def path(self, *parts: str) -> str:
        return join(self.root, *parts) if parts else self.root

    def show(self, path: str) -> str:
        """``path`` in the user's terms: SRC as given, then the relative part."""
        rel = self.rel(path)
        return self.url if rel == "" else join(self.url, rel)

    def rel(self, path: str) -> str:
        if path == self.root:
            return ""
        return posixpath.relpath(path, self.root) if is_local(self.fs) else path[len(self.root) :].lstrip("/")

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def isfile(self, path: str) -> bool:
        return bool(self.fs.isfile(path))

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """(sub-folder names, file names) of ``path``, natural-sorted, hidden ('.' names) left out."""
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            raise InputLayoutError(f"{self.show(path)}: folder not found") from None
        dirs: list[str] = []
        files: list[str] = []
        for e in entries:
            name = posixpath.basename(str(e["name"]).rstrip("/"))
            if not name or name.startswith(".") or str(e["name"]).rstrip("/") == path.rstrip("/"):
                continue
            (dirs if e["type"] == "directory" else files).append(name)
        return sorted(dirs, key=natural_key), sorted(files, key=natural_key)

    def read(self, path: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(path))
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise InputLayoutError(f"{self.show(path)}: cannot read ({e.__class__.__name__})") from None

    def read_many(self, paths: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """(path, bytes) in order; object stores are read READ_AHEAD files at a time in parallel threads."""
        if is_local(self.fs):
            for p in paths:
                yield p, self.read(p)
            return
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            for start in range(0, len(paths), READ_AHEAD):
                chunk = paths[start : start + READ_AHEAD]
                yield from zip(chunk, pool.map(self.read, chunk), strict=True)

    def require_dir(self, path: str, what: str) -> None:
        if not self.isdir(path):
            raise InputLayoutError(f"{self.show(path)}: missing folder; expected {what}")


def _with_ext(names: list[str], exts: tuple[str, ...]) -> list[str]:
    return [n for n in names if n.lower().endswith(exts)]


def _check_id(video_id: str, where: str) -> str:
    if not video_id or not video_id.strip():
        raise InputLayoutError(f"{where}: empty video id; video ids must be non-empty")
    return video_id


def detect_format(src: _Source, resolution: str = "480p") -> str:
    """The layout of SRC, or InputLayoutError saying what each format expects."""
    if src.isfile(src.root):
        if src.root.lower().endswith(VIDEO_EXTS):
            return "video"
        raise InputLayoutError(f"{src.show(src.root)}: a single file must be a video ({', '.join(VIDEO_EXTS)})")
    if not src.isdir(src.root):
        raise InputLayoutError(f"{src.show(src.root)}: source folder not found")
    if src.isdir(src.path("JPEGImages", resolution)):
        return "davis"
    if src.isdir(src.path("JPEGImages")):
        return "youtube-vos"
    dirs, files = src.listdir(src.root)
    if any(src.isdir(src.path(d, "JPEGImages")) for d in dirs):
        return "youtube-vos"
    if _with_ext(files, VIDEO_EXTS):
        return "video"
    for d in dirs:
        if _with_ext(src.listdir(src.path(d))[1], IMAGE_EXTS):
            return "frames"
    raise InputLayoutError(
        f"{src.show(src.root)}: cannot tell the layout; expected JPEGImages/{resolution}/<video>/*.jpg (davis), "
        f"JPEGImages/<video>/*.jpg (youtube-vos), <video>/*.jpg|png (frames) or *.mp4|webm|mov|mkv (video)"
    )


def _frame_files(src: _Source, folder: str) -> list[str]:
    names = _with_ext(src.listdir(folder)[1], IMAGE_EXTS)
    if not names:
        raise InputLayoutError(f"{src.show(folder)}: no frames ({', '.join(IMAGE_EXTS)} files)")
    return [join(folder, n) for n in names]


def _annotations(src: _Source, folder: str, frames: list[str]) -> tuple[tuple[int, str], ...]:
    """Annotation files of one video, matched to frames by file stem, as (frame_index, path)."""
    if not src.isdir(folder):
        return ()
    stems = {posixpath.splitext(posixpath.basename(f))[0]: i for i, f in enumerate(frames)}
    out = []
    for name in _with_ext(src.listdir(folder)[1], ANNOTATION_EXTS):
        stem = posixpath.splitext(name)[0]
        if stem not in stems:
            raise InputLayoutError(
                f"{src.show(join(folder, name))}: annotation has no frame of the same name in "
                f"{src.show(posixpath.dirname(frames[0]))}"
            )
        out.append((stems[stem], join(folder, name)))
    return tuple(sorted(out))


def _image_videos(src: _Source, img_root: str, ann_root: str | None, video_ids: list[str]) -> list[_ImageVideo]:
    has_ann = ann_root is not None and src.isdir(ann_root)
    videos = []
    for vid in video_ids:
        folder = join(img_root, vid)
        src.require_dir(folder, f"the frames of video {vid!r}")
        frames = _frame_files(src, folder)
        annotations = None
        if has_ann and ann_root:
            ann_folder = join(ann_root, vid)
            if not src.isdir(ann_folder):
                log.warning("%s: no annotations for video %r, it gets no prompts", src.show(ann_folder), vid)
            annotations = _annotations(src, ann_folder, frames)
        videos.append(_ImageVideo(_check_id(vid, src.show(folder)), tuple(frames), annotations))
    return videos


def list_davis(src: _Source, split: str | None, resolution: str) -> list[_ImageVideo]:
    img_root = src.path("JPEGImages", resolution)
    src.require_dir(img_root, f"JPEGImages/{resolution}/<video>/*.jpg (DAVIS layout)")
    sets_dir = src.path("ImageSets", "2017")
    if split is not None:
        set_file = join(sets_dir, f"{split}.txt")
        if not src.isfile(set_file):
            have = _with_ext(src.listdir(sets_dir)[1], (".txt",)) if src.isdir(sets_dir) else []
            raise InputLayoutError(f"{src.show(set_file)}: split list not found (have: {have or 'none'})")
        set_files = [set_file]
    elif src.isdir(sets_dir):
        set_files = [join(sets_dir, n) for n in _with_ext(src.listdir(sets_dir)[1], (".txt",))]
    else:
        set_files = []
    if set_files:
        ids: set[str] = set()
        for f in set_files:
            ids.update(line.strip() for line in src.read(f).decode("utf-8").splitlines() if line.strip())
        video_ids = sorted(ids, key=natural_key)
    else:
        video_ids = src.listdir(img_root)[0]
    return _image_videos(src, img_root, src.path("Annotations", resolution), video_ids)


def list_youtube_vos(src: _Source, split: str | None) -> list[_ImageVideo]:
    root = src.root
    if split is not None:
        root = src.path(split)
        src.require_dir(join(root, "JPEGImages"), f"{split}/JPEGImages/<video>/*.jpg (YouTube-VOS layout)")
    elif not src.isdir(src.path("JPEGImages")):
        splits = [d for d in src.listdir(src.root)[0] if src.isdir(src.path(d, "JPEGImages"))]
        if len(splits) != 1:
            raise InputLayoutError(
                f"{src.show(src.path('JPEGImages'))}: missing folder; give the split folder itself as SRC, "
                f"or choose one with --split (found: {splits or 'none'})"
            )
        root = src.path(splits[0])
    img_root = join(root, "JPEGImages")
    video_ids = src.listdir(img_root)[0]
    meta_path = join(root, "meta.json")
    if src.isfile(meta_path):
        try:
            meta = json.loads(src.read(meta_path))
            listed = set(meta["videos"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputLayoutError(f"{src.show(meta_path)}: not a YouTube-VOS meta.json ({e!r})") from None
        missing = sorted(listed - set(video_ids))
        if missing:
            log.warning("%s lists %d videos without frames, e.g. %s", src.show(meta_path), len(missing), missing[:3])
    return _image_videos(src, img_root, join(root, "Annotations"), video_ids)


def list_frames(src: _Source) -> list[_ImageVideo]:
    dirs = [d for d in src.listdir(src.root)[0] if not d.startswith("_")]
    if not dirs:
        raise InputLayoutError(f"{src.show(src.root)}: no <video>/ folders with frames")
    return _image_videos(src, src.root, None, dirs)


def list_video_files(src: _Source) -> list[_FileVideo]:
    if src.isfile(src.root):
        files = [src.root]
    else:
        if not src.isdir(src.root):
            raise InputLayoutError(f"{src.show(src.root)}: source folder not found")
        files = [src.path(n) for n in _with_ext(src.listdir(src.root)[1], VIDEO_EXTS)]
    if not files:
        raise InputLayoutError(f"{src.show(src.root)}: no video files ({', '.join(VIDEO_EXTS)})")
    seen: dict[str, str] = {}
    out = []
    for path in files:
        vid = _check_id(posixpath.splitext(posixpath.basename(path))[0], src.show(path))
        if vid in seen:
            raise InputLayoutError(f"{src.show(seen[vid])} and {src.show(path)} both give video id {vid!r}")
        seen[vid] = path
        out.append(_FileVideo(vid, path))
    return out


# --------------------------------------------------------------------------------------------- frames


def _image_frames(
    src: _Source, video: _ImageVideo, max_pixels: int, sizes: list[tuple[int, int]]
) -> Iterator[tuple[int, bytes, int, int, str]]:
    """Untouched image bytes, each proven decodable; records (width, height) per frame into ``sizes``."""
    for i, (path, data) in enumerate(src.read_many(video.frames)):
        try:
            (w, h), _ = check_image(data, max_pixels=max_pixels)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{src.show(path)}: {_reason(e)}") from None
        sizes.append((w, h))
        yield i, data, w, h, src.rel(path)


def _reason(e: Exception) -> str:
    text = str(e)
    return text.split(": ", 1)[1] if text.startswith("image (") and ": " in text else text


def _video_frames(
    src: _Source, video: _FileVideo, fps: float | None, max_side: int | None, quality: int
) -> Iterator[tuple[int, bytes, int, int, str]]:
    """Decoded, resampled, shrunk frames of one video file as JPEG bytes."""
    import av  # PyAV: only the video layout needs it

    shown = src.show(video.path)
    rel = src.rel(video.path) or posixpath.basename(video.path)
    handle = src.fs.open(video.path, "rb") if not is_local(src.fs) else None
    try:
        container = av.open(handle if handle is not None else video.path)
    except (av.FFmpegError, OSError, ValueError) as e:
        if handle is not None:
            handle.close()
        raise ImageDecodeError(f"{shown}: not a readable video ({e})") from None
    count = 0
    try:
        if not container.streams.video:
            raise ImageDecodeError(f"{shown}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        tol = 0.5 / rate  # half a source frame: timestamps are rounded
        t0: float | None = None
        next_k = 0  # index of the next output sample time t0 + k / fps
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / rate
                if t0 is None:
                    t0 = t
                if fps is not None:
                    if t - t0 < next_k / fps - tol:
                        continue
                    next_k = int(np.floor((t - t0 + tol) * fps)) + 1
                w, h = fit_size(frame.width, frame.height, max_side)
                rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
                yield count, encode_jpeg(rgb, quality=quality), w, h, f"{rel}#t={t:.3f}"
                count += 1
        except av.FFmpegError as e:
            raise ImageDecodeError(f"{shown}: video decoding failed after {count} frames ({e})") from None
    finally:
        container.close()
        if handle is not None:
            handle.close()
    if count == 0:
        raise ImageDecodeError(f"{shown}: no decodable video frames")


# --------------------------------------------------------------------------------------------- prompts


def _prompt_tables(src: _Source, video: _ImageVideo, sizes: list[tuple[int, int]], max_pixels: int) -> list[pa.Table]:
    """For each object id, its mask on the first annotated frame where it appears (score 1.0)."""
    from rvos_batch.maskstore import mask_table

    tables = []
    seen: set[int] = set()
    for frame_index, path in video.annotations or ():
        try:
            ids = read_palette_png(src.read(path), max_pixels=max_pixels)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{src.show(path)}: {_reason(e)}") from None
        w, h = sizes[frame_index]
        if ids.shape != (h, w):
            raise InputLayoutError(
                f"{src.show(path)}: annotation is {ids.shape[1]}x{ids.shape[0]} but its frame "
                f"{src.show(video.frames[frame_index])} is {w}x{h}"
            )
        present = np.unique(ids)
        new = [int(o) for o in present if o not in (0, VOID_ID) and int(o) not in seen]
        if not new:
            continue
        masks = ids[None, :, :] == np.asarray(new, dtype=np.uint8)[:, None, None]  # (K, H, W)
        tables.append(mask_table(video.video_id, frame_index, new, masks, np.ones(len(new), np.float32)))
        seen.update(new)
    return tables


# --------------------------------------------------------------------------------------------- ingest


def ingest(config: IngestConfig) -> IngestResult:
    """Ingest ``config.src`` into ``config.out`` (see the module docstring); all or nothing."""
    src = _Source(config.src, config.storage_options)
    if not src.isdir(src.root) and not src.isfile(src.root):
        raise InputLayoutError(f"{src.show(src.root)}: source not found")
    fmt = config.format or detect_format(src, config.resolution)
    if fmt != "video":
        for name in ("fps", "max_side"):
            if getattr(config, name) is not None:
                raise InputLayoutError(f"--{name.replace('_', '-')} applies to --format video only (format is {fmt})")
    if config.split is not None and fmt not in ("davis", "youtube-vos"):
        raise InputLayoutError(f"--split applies to davis and youtube-vos only (format is {fmt})")

    videos: list[_ImageVideo] | list[_FileVideo]
    if fmt == "davis":
        videos = list_davis(src, config.split, config.resolution)
    elif fmt == "youtube-vos":
        videos = list_youtube_vos(src, config.split)
    elif fmt == "frames":
        if not src.isdir(src.root):
            raise InputLayoutError(f"{src.show(src.root)}: source folder not found")
        videos = list_frames(src)
    else:
        videos = list_video_files(src)
    if not videos:
        raise InputLayoutError(f"{src.show(src.root)}: no videos found ({fmt} layout)")
    with_prompts = fmt in ("davis", "youtube-vos") and any(
        isinstance(v, _ImageVideo) and v.annotations is not None for v in videos
    )
    log.info("ingesting %d videos (%s) from %s", len(videos), fmt, src.url)

    prompt_tables: list[pa.Table] = []
    show_bar = sys.stderr.isatty() if config.progress is None else config.progress
    bar = tqdm(total=len(videos), unit="video", desc="ingest", file=sys.stderr, disable=not show_bar)
    prompts_url: str | None = None
    num_prompts = 0
    try:
        with CorpusWriter(
            config.out, videos_per_file=config.videos_per_file, storage_options=dict(config.storage_options)
        ) as writer:
            for video in videos:
                if isinstance(video, _FileVideo):
                    writer.add_video(
                        video.video_id,
                        _video_frames(src, video, config.fps, config.max_side, config.jpeg_quality),
                    )
                else:
                    sizes: list[tuple[int, int]] = []
                    writer.add_video(video.video_id, _image_frames(src, video, config.max_pixels, sizes))
                    if video.annotations:
                        prompt_tables.extend(_prompt_tables(src, video, sizes, config.max_pixels))
                bar.update(1)
                bar.set_postfix(frames=writer.num_frames, refresh=False)
            if with_prompts:
                # Written before the frames are committed: if this fails, the frames are aborted too.
                from rvos_batch.maskstore import concat_masks, write_mask_dataset

                table = concat_masks(prompt_tables)
                num_prompts = table.num_rows
                prompts_url = write_mask_dataset(
                    join(config.out, "prompts"), table, storage_options=dict(config.storage_options)
                )
            num_videos, num_frames = writer.num_videos, writer.num_frames
        files = writer.close()  # already committed by the with-block; returns the final names
    finally:
        bar.close()
    log.info("wrote %d videos, %d frames, %d prompts to %s", num_videos, num_frames, num_prompts, config.out)
    return IngestResult(fmt, num_videos, num_frames, num_prompts, tuple(files), prompts_url)
