"""The photos data set (crops of scikit-image's photographs) and scripts/table1.py, end to end."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import blurdiff.photos as photos
from blurdiff.cli import main as cli
from blurdiff.data import LMDBImageDataset
from blurdiff.output_folders import OutputExistsError
from blurdiff.presets import get_preset
from blurdiff.run_folder import run_lock
from blurdiff.schedules import PAPER_F_MAX

ROOT = Path(__file__).resolve().parents[1]


def needs_skimage():
    pytest.importorskip("skimage", reason="the photos data set needs scikit-image (pip install scikit-image)")


def records(path) -> list[tuple[bytes, bytes]]:
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# the data set
# --------------------------------------------------------------------------------------------


def test_writes_n_images_of_the_size_deterministically(tmp_path):
    needs_skimage()
    a = photos.make_photos_lmdb(tmp_path / "a", n=10, size=16, seed=3)
    b = photos.make_photos_lmdb(tmp_path / "b", n=10, size=16, seed=3)
    ra, rb = records(a), records(b)
    assert len(ra) == 10 and ra == rb  # same keys, same bytes
    assert sorted(k for k, _ in ra) == sorted(photos.photo_key(i, 3).encode() for i in range(10))
    assert all(len(k) == 40 and all(c in b"0123456789abcdef" for c in k) for k, _ in ra)  # the toy's key format
    ds = LMDBImageDataset(a, None)  # native size: the crops are written at --size
    assert len(ds) == 10 and all(ds.read_image(i).size == (16, 16) for i in range(10))
    # image i does not depend on n; another seed gives other crops
    by_key = {k: v for k, v in ra}
    small = dict(records(photos.make_photos_lmdb(tmp_path / "c", n=4, size=16, seed=3)))
    assert all(by_key[k] == v for k, v in small.items())
    other = dict(records(photos.make_photos_lmdb(tmp_path / "d", n=4, size=16, seed=4)))
    assert not set(other) & set(by_key)
    x = photos.photo_crop(7, 16, seed=3)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert np.array_equal(
        x,
        np.asarray(
            LMDBImageDataset(a, None).read_image([i for i in range(10) if ds.key(i) == photos.photo_key(7, 3)][0])
        ),
    )


def test_train_and_heldout_crops_share_no_pixel():
    needs_skimage()
    shapes = {name: a.shape[:2] for name, a in photos.load_photos().items()}
    assert sorted(shapes) == sorted(n for n, _ in photos.PHOTOS) and len(shapes) == 9
    seen = {"train": set(), "heldout": set()}
    for split in ("train", "heldout"):
        for i in range(400):
            c = photos.crop_spec(i, 32, seed=1, split=split)
            H, W = shapes[c.photo]
            top, bottom, left, right = photos.heldout_region(c.photo, H, W)
            m = min(H, W)
            assert min(32, m // 2) <= c.side <= m // 2 and c.side >= round(0.1 * m) - 1
            assert 0 <= c.top <= H - c.side and 0 <= c.left <= W - c.side
            inside = top <= c.top and c.top + c.side <= bottom and left <= c.left and c.left + c.side <= right
            overlaps = c.top < bottom and c.top + c.side > top and c.left < right and c.left + c.side > left
            assert inside if split == "heldout" else not overlaps, (split, c)
            seen[split].add(c.photo)
    assert seen["train"] == seen["heldout"] == set(shapes)  # both splits mix all nine photographs
    # the stereo pair holds out the same scene
    assert dict(photos.PHOTOS)["motorcycle_left.png"] == dict(photos.PHOTOS)["motorcycle_right.png"]


def test_pixels_of_the_two_splits_are_disjoint():
    """The same, counted on pixels: mark every source pixel each split's crops read."""
    needs_skimage()
    shapes = {name: a.shape[:2] for name, a in photos.load_photos().items()}
    masks = {split: {n: np.zeros(s, dtype=bool) for n, s in shapes.items()} for split in ("train", "heldout")}
    for split in masks:
        for i in range(300):
            c = photos.crop_spec(i, 16, seed=0, split=split)
            masks[split][c.photo][c.top : c.top + c.side, c.left : c.left + c.side] = True
    for name in shapes:
        assert not (masks["train"][name] & masks["heldout"][name]).any(), name


def test_cli_writes_both_splits_and_refuses_to_clobber(tmp_path, capsys):
    needs_skimage()
    assert cli(["data", "photos", "--out", str(tmp_path / "tr"), "--n", "5", "--size", "8", "--seed", "2"]) == 0
    assert cli(["data", "photos", "--out", str(tmp_path / "ho"), "--n", "6", "--size", "8", "--split", "heldout"]) == 0
    assert len(records(tmp_path / "tr")) == 5 and len(records(tmp_path / "ho")) == 6
    assert set(dict(records(tmp_path / "tr"))) != set(dict(records(tmp_path / "ho")))
    capsys.readouterr()
    assert cli(["data", "photos", "--out", str(tmp_path / "tr"), "--n", "3", "--size", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["data", "photos", "--out", str(tmp_path / "tr"), "--n", "3", "--size", "8", "--overwrite"]) == 0
    assert len(records(tmp_path / "tr")) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        photos.make_photos_lmdb(mine, 2, 8, overwrite=True)
    assert os.listdir(mine) == ["notes.txt"]
    with pytest.raises(OutputExistsError):
        photos.make_photos_lmdb(tmp_path / "tr", 2, 8)


def test_without_scikit_image_the_cli_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` raises ImportError
    rc = cli(["data", "photos", "--out", str(tmp_path / "p"), "--n", "4", "--size", "8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("blurdiff data: error:") and len(err.strip().splitlines()) == 1
    assert 'pip install "blurdiff[photos]"' in err and "pip install scikit-image" in err
    assert not (tmp_path / "p").exists()
    with pytest.raises(photos.PhotosUnavailableError):
        photos.load_photos()


def test_a_missing_photograph_is_named(tmp_path, monkeypatch, capsys):
    needs_skimage()
    photos.load_photos()  # cached: a changed list of photographs must be read anew
    monkeypatch.setattr(photos, "PHOTOS", photos.PHOTOS + (("no_such_photo.png", "tl"),))
    with pytest.raises(FileNotFoundError, match="no_such_photo.png"):
        photos.load_photos()
    rc = cli(["data", "photos", "--out", str(tmp_path / "p"), "--n", "4", "--size", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_photo.png" in err and "never downloads" in err


def test_bad_arguments():
    needs_skimage()
    with pytest.raises(ValueError, match="split"):
        photos.photo_crop(0, 8, split="test")
    with pytest.raises(ValueError, match="size"):
        photos.photo_crop(0, 0)


def test_photos32_presets_differ_only_in_the_process():
    rows = [get_preset(f"photos32-{r}") for r in ("quartic", "log", "noblur")]
    for p in rows:
        assert p.unet == rows[0].unet and p.unet_overrides == rows[0].unet_overrides
        assert (p.lr, p.batch_size, p.ema_decay, p.warmup_steps, p.grad_clip) == (
            rows[0].lr,
            rows[0].batch_size,
            rows[0].ema_decay,
            rows[0].warmup_steps,
            rows[0].grad_clip,
        )
        assert p.process.resolution == (32, 32) and p.process.sigma == 0.4 and p.process.num_timesteps == 1000
        assert dataclasses.replace(p.process, blur_schedule="none", f_max=0.0) == dataclasses.replace(
            rows[0].process, blur_schedule="none", f_max=0.0
        )
    # the same physical blur as the paper's at 64x64: f(N) x (32/64)^2
    assert [p.process.f_max for p in rows] == pytest.approx([PAPER_F_MAX["quartic"] / 4, 0.15, 0.0])
    assert [p.process.blur_schedule for p in rows] == ["quartic", "log", "none"]


# --------------------------------------------------------------------------------------------
# scripts/table1.py
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "scripts" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "--steps",
    "3",
    "--resolution",
    "16",
    "--n",
    "16",
    "--sample-batch",
    "16",
    "--fast-steps",
    "4",
    "--num-timesteps",
    "20",
    "--train-images",
    "48",
    "--heldout-images",
    "40",
    "--ckpt-every",
    "2",
    "--threads",
    "1",
    "--quiet",
    "--no-fid",
]


@pytest.mark.slow
def test_table1_end_to_end_and_resumes(tmp_path, table1, monkeypatch, capsys, one_torch_thread):
    needs_skimage()
    out = tmp_path / "exp"
    argv = ["--out", str(out), "--seeds", "0", "1", *TINY]
    real_train = table1.train
    trained = []

    def interrupted(options):  # the fourth training stops after 2 of its 3 steps (a checkpoint at 2)
        trained.append(Path(options.out).name)
        if Path(options.out).name == "log-seed1":
            options.max_steps = 2
            real_train(options)
            raise KeyboardInterrupt
        return real_train(options)

    monkeypatch.setattr(table1, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        table1.main(argv)
    assert trained == ["quartic-seed0", "quartic-seed1", "log-seed0", "log-seed1"]
    assert (out / "runs" / "log-seed1" / "checkpoints" / "ckpt-00000002.pt").is_file()
    assert not (out / "results" / "log-seed1" / "train.json").exists()
    first = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*") if p.is_file()}

    # Again: only what is missing; the interrupted run goes on from its checkpoint; a run that
    # another call is training (its folder locked) is skipped, and done by a later call.
    trained.clear()
    monkeypatch.setattr(table1, "train", lambda o: (trained.append(Path(o.out).name), real_train(o))[1])
    capsys.readouterr()
    with run_lock(out / "runs" / "noblur-seed1"):
        assert table1.main(argv) == 0
    assert trained == ["log-seed1", "noblur-seed0", "noblur-seed1"]
    assert "skipped noblur-seed1: " in capsys.readouterr().out
    assert not (out / "results" / "noblur-seed1").exists()
    trained.clear()
    assert table1.main(argv) == 0
    assert trained == ["noblur-seed1"]
    info = json.loads((out / "results" / "log-seed1" / "train.json").read_text())
    assert info["step"] == 3 and info["steps_this_call"] == 1
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # finished work untouched

    table = (out / "table.md").read_text()
    for setting in ("quartic", "log", "noblur"):
        assert table.count(f"| {setting} |") == 2  # Eq. 12 and the few-step sampler
    assert "Eq. 12 (ddpm, 20 steps)" in table and "few-step (ancestral2m, 4 steps)" in table
    assert "held-out data (noise floor)" in table and "training crops" in table and "FID skipped" in table
    assert "wall clock from the plan to the last sample" in table
    assert (out / "figure.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6 and all(r["eq12"]["report"]["n"] == 16 for r in results["runs"].values())
    # the same noise for every setting of a seed, other noise for another seed
    image = lambda run, s: (out / "results" / run / s / "000000.png").read_bytes()  # noqa: E731
    assert image("quartic-seed0", "eq12") != image("quartic-seed1", "eq12")

    # A third time: nothing is trained or sampled again.
    import blurdiff.samplers as samplers

    def refuse(*a, **k):
        raise AssertionError("finished work redone")

    monkeypatch.setattr(table1, "train", refuse)
    monkeypatch.setattr(samplers.Sampler, "sample", refuse)
    monkeypatch.setattr(table1, "benchmark", refuse)
    before = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.png")}
    capsys.readouterr()
    assert table1.main(argv) == 0
    assert "every training and sample is done" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())

    # Other settings on the same folder are refused, naming what differs.
    with pytest.raises(SystemExit, match="steps"):
        table1.main(["--out", str(out), *TINY[:1], "4", *TINY[2:]])


def test_table1_fid_is_skipped_without_weights(tmp_path, table1):
    args = argparse.Namespace(no_fid=False, fid_weights=str(tmp_path / "absent.pth"), n=16, heldout_images=32)
    fid = table1.Fid(tmp_path, tmp_path / "data", args)
    assert not fid.available and fid.note.startswith("FID skipped") and "absent.pth" in fid.note


def test_table1_blur_at_other_resolutions(table1):
    """f(N) keeps the physical blur at any side ((side/64)^2 of the paper's), or is the paper's with --paper-blur."""
    args = table1.parse_args(["--out", "x", "--resolution", "16", "--num-timesteps", "20", "--fast-steps", "4"])
    assert table1.process_overrides("photos32-quartic", args) == {
        "num_timesteps": 20,
        "f_max": pytest.approx(0.140625 / 16),
    }
    args = table1.parse_args(["--out", "x"])
    assert table1.process_overrides("photos32-log", args) == {}
    args = table1.parse_args(["--out", "x", "--paper-blur"])
    assert table1.process_overrides("photos32-log", args) == {"f_max": 0.6}


def test_table1_estimate_only_makes_nothing(tmp_path, table1, capsys, one_torch_thread):
    out = tmp_path / "exp"
    assert table1.main(["--out", str(out), "--estimate-only", "--seeds", "0", *TINY]) == 0
    text = capsys.readouterr().out
    assert "estimate of the whole experiment (3 runs)" in text and "training step" in text
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# scripts/head_to_head.py: table1's machinery on the toy images and the photos, one row per family
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_head_to_head_end_to_end_and_resumes(tmp_path, monkeypatch, capsys, one_torch_thread):
    needs_skimage()
    spec = importlib.util.spec_from_file_location("head_to_head", ROOT / "scripts" / "head_to_head.py")
    h2h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h2h)
    out = tmp_path / "h2h"
    argv = ["--out", str(out), "--seeds", "0", "--toy-steps", "2", "--photos-steps", "2", "--toy-n", "16"]
    argv += ["--photos-resolution", "16", *TINY[4:]]  # TINY without --steps and --resolution
    assert h2h.main(argv) == 0
    printed = capsys.readouterr().out
    assert "head-to-head: about" in printed and "left ≈" in printed and "(ETA " in printed  # estimate, progress
    table = (out / "table.md").read_text()
    for title in ("Head-to-head: toy images at 16x16", "Head-to-head: photo crops at 16x16"):
        assert table.count(title) == 1
    for family, preset in (("hoogeboom", "toy-hoogeboom"), ("rissanen", "toy-rissanen")):
        assert table.count(f"| {family} | {family}: ") == 4  # two samplers, two parts
        config = json.loads((out / "toy" / "runs" / f"{family}-seed0" / "config.json").read_text())
        assert config["preset"] == preset and config["process"]["family"] == family
    assert table.count("| ddpm | 0 (no blur) |") == table.count("| lee | ") == 4
    assert (out / "figure.png").is_file() and (out / "toy" / "figure.png").is_file()

    # Again: nothing is trained or sampled again; the summary is written from what is there.
    import blurdiff.samplers as samplers

    def refuse(*a, **k):
        raise AssertionError("finished work redone")

    monkeypatch.setattr(h2h.table1, "train", refuse)
    monkeypatch.setattr(samplers.Sampler, "sample", refuse)
    assert h2h.main(argv) == 0
    assert "every training and sample is done" in capsys.readouterr().out
