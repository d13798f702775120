"""Data: the toy dead-leaves lmdb, the LSUN-format lmdb and image-folder readers, bad records,
DataLoader workers, the resumable sharded infinite loader, and the PNG exporter."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image, features

from blurdiff.data import (
    ImageFolderDataset,
    LMDBImageDataset,
    batches_per_epoch,
    epoch_indices,
    export_lmdb_to_folder,
    infinite_loader,
    open_dataset,
)
from blurdiff.toy_data import make_toy_lmdb, toy_image, toy_key

HEX40 = re.compile(rb"^[0-9a-f]{40}$")
WEBP = features.check("webp")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def lmdb_items(path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def write_lmdb(path, items) -> None:
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in items:
            txn.put(k, v)
    env.close()


def encode(arr: np.ndarray, fmt: str = "WEBP") -> bytes:
    buf = io.BytesIO()
    if fmt == "WEBP":
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    else:
        Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def rand_key(rng) -> bytes:
    return hashlib.sha1(rng.bytes(16)).hexdigest().encode("ascii")


def split_image(h: int, w: int, frac: float, axis: int = 1) -> np.ndarray:
    """Black before ``frac`` of the width (axis=1) or height (axis=0), white after."""
    a = np.full((h, w, 3), 255, np.uint8)
    if axis == 1:
        a[:, : int(round(frac * w))] = 0
    else:
        a[: int(round(frac * h))] = 0
    return a


def edge_position(profile: torch.Tensor) -> float:
    """Where a dark-to-bright profile in [-1, 1] crosses 0, in pixels (sub-pixel)."""
    p = profile.double().numpy()
    i = int(np.argmax(p > 0))
    assert i > 0 and p[i - 1] <= 0
    return i - 1 + (0 - p[i - 1]) / (p[i] - p[i - 1]) + 0.5  # pixel centres at k + 0.5


def radial_slope(imgs: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of grey versions of ``imgs``."""
    s = imgs.shape[1]
    power = 0.0
    for im in imgs:
        g = im.astype(np.float64).mean(-1)
        g -= g.mean()
        power = power + np.abs(np.fft.fft2(g)) ** 2
    fy = np.fft.fftfreq(s)[:, None]
    fx = np.fft.fftfreq(s)[None, :]
    f = np.hypot(fy, fx)
    bins = np.arange(1, s // 2) / s
    rad = np.array([power[(f >= b - 0.5 / s) & (f < b + 0.5 / s)].mean() for b in bins])
    return float(np.polyfit(np.log(bins), np.log(rad), 1)[0])


@pytest.fixture(scope="module")
def toy8(toy_lmdb_of):
    return toy_lmdb_of(8, 32)


@pytest.fixture
def bad_lmdb(tmp_path):
    """5 records, the 3rd (in key order) corrupt; returns (path, keys, arrays)."""
    rng = np.random.default_rng(1)
    keys = sorted(rand_key(rng) for _ in range(5))
    arrays = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in keys]
    values = [encode(a) for a in arrays]
    values[2] = b"RIFF\x00\x00\x00\x00WEBPVP8 garbage"
    path = tmp_path / "bad"
    write_lmdb(path, zip(keys, values))
    return path, keys, arrays


# --------------------------------------------------------------------------------------------
# toy data
# --------------------------------------------------------------------------------------------


def test_toy_lmdb_roundtrip(toy8, tmp_path):
    ds = LMDBImageDataset(toy8, 32)
    assert len(ds) == 8
    xs = torch.stack([ds[i] for i in range(len(ds))])
    assert xs.shape == (8, 3, 32, 32) and xs.dtype == torch.float32
    assert xs.min() >= -1 and xs.max() <= 1
    assert xs.min() < -0.5 and xs.max() > 0.5  # real content, not a constant
    assert not torch.equal(xs[0], xs[1])
    ds.close()  # py-lmdb refuses a second open of the same environment in one process

    items = lmdb_items(toy8)
    assert len(items) == 8
    assert all(HEX40.match(k) for k, _ in items)
    assert sorted(k.decode() for k, _ in items) == sorted(toy_key(i, 0) for i in range(8))
    for _, v in items:
        assert Image.open(io.BytesIO(v)).format == ("WEBP" if WEBP else "PNG")
    # lossless: key of image i holds exactly toy_image(i)
    by_key = dict(items)
    for i in range(8):
        dec = np.asarray(Image.open(io.BytesIO(by_key[toy_key(i, 0).encode()])).convert("RGB"))
        np.testing.assert_array_equal(dec, toy_image(i, 32, 0))
    # the reader's order is key order, values scaled to [-1, 1]
    j = sorted(by_key).index(toy_key(3, 0).encode())
    expect = torch.from_numpy(toy_image(3, 32, 0)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(ds[j], expect, rtol=0, atol=1e-6)
    assert not os.path.exists(str(toy8) + ".tmp")

    same = make_toy_lmdb(tmp_path / "same", n=8, size=32, seed=0)
    assert lmdb_items(same) == items
    other = make_toy_lmdb(tmp_path / "other", n=8, size=32, seed=1)
    other_items = lmdb_items(other)
    assert {k for k, _ in other_items}.isdisjoint(by_key)
    assert {v for _, v in other_items}.isdisjoint(by_key.values())
    small = make_toy_lmdb(tmp_path / "small", n=4, size=32, seed=0)
    small_items = dict(lmdb_items(small))
    assert len(small_items) == 4
    assert all(by_key[k] == v for k, v in small_items.items())


def test_toy_lmdb_refuses_overwrite(tmp_path):
    out = tmp_path / "t"
    make_toy_lmdb(out, n=2, size=8, seed=0)
    before = lmdb_items(out)
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        make_toy_lmdb(out, n=3, size=8, seed=5)
    assert lmdb_items(out) == before
    make_toy_lmdb(out, n=3, size=8, seed=5, overwrite=True)
    assert len(lmdb_items(out)) == 3
    assert sorted(os.listdir(tmp_path)) == ["t"]  # no .tmp left behind
    (tmp_path / "empty").mkdir()
    make_toy_lmdb(tmp_path / "empty", n=1, size=8)  # an empty directory is fine
    assert len(lmdb_items(tmp_path / "empty")) == 1


def test_toy_power_spectrum_is_natural():
    imgs = np.stack([toy_image(i, 64, seed=7) for i in range(12)])
    slope = radial_slope(imgs)
    assert -4.0 < slope < -1.5, slope
    # the measurement itself discriminates: white noise is flat
    noise = np.random.default_rng(0).integers(0, 256, imgs.shape).astype(np.uint8)
    assert abs(radial_slope(noise)) < 0.3


# --------------------------------------------------------------------------------------------
# LSUN-like lmdb: resize without cropping
# --------------------------------------------------------------------------------------------


def test_lsun_like_lmdb_resized_without_crop(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        "half": split_image(60, 80, 0.5),  # 80x60 (W x H), split in the middle
        "quarter": split_image(60, 80, 0.25),  # split at a quarter of the width
        "tall": split_image(90, 40, 0.25, axis=0),  # 40x90, split at a quarter of the height
        "noise": rng.integers(0, 256, (33, 47, 3), dtype=np.uint8),
        "grey": np.full((64, 64, 3), 128, np.uint8),
    }
    keys = {name: rand_key(rng) for name in images}
    write_lmdb(tmp_path / "lsun", [(keys[n], encode(a)) for n, a in images.items()])
    ds = open_dataset(tmp_path / "lsun", 32)
    assert isinstance(ds, LMDBImageDataset) and len(ds) == len(images)
    by_name = {name: ds[sorted(keys.values()).index(keys[name])] for name in images}
    for name, x in by_name.items():
        assert x.shape == (3, 32, 32), name
        assert x.min() >= -1 and x.max() <= 1
    # no crop: an edge at fraction q of the width stays at q * 32 (a centre crop of the 60x60
    # square would move the quarter edge to (20-10)/60*32 = 5.3 and cut the tall one likewise)
    assert edge_position(by_name["half"][0].mean(0)) == pytest.approx(16.0, abs=0.3)
    assert edge_position(by_name["quarter"][0].mean(0)) == pytest.approx(8.0, abs=0.3)
    assert edge_position(by_name["tall"][0].mean(1)) == pytest.approx(8.0, abs=0.3)
    assert by_name["half"][:, :, :14].max() < -0.95 and by_name["half"][:, :, 18:].min() > 0.95
    torch.testing.assert_close(by_name["grey"], torch.full((3, 32, 32), 128 / 127.5 - 1))

    # non-square target resolution (H, W) and the .mdb file path form
    ds2 = open_dataset(tmp_path / "lsun" / "data.mdb", (16, 24))
    assert isinstance(ds2, LMDBImageDataset)
    assert ds2[0].shape == (3, 16, 24)


# --------------------------------------------------------------------------------------------
# errors and bad records
# --------------------------------------------------------------------------------------------


def test_corrupted_record_is_skipped_counted_and_logged(bad_lmdb, caplog):
    path, keys, arrays = bad_lmdb
    ds = LMDBImageDataset(path, (12, 16))
    assert len(ds) == 5  # never shrinks
    good = [torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arrays]
    with caplog.at_level(logging.WARNING, logger="blurdiff.data"):
        torch.testing.assert_close(ds[1], good[1])
        assert ds.bad_records == 0
        torch.testing.assert_close(ds[2], good[3])  # the next good record
        assert ds.bad_records == 1
        assert ds.bad_keys == [keys[2].decode()]
        torch.testing.assert_close(ds[2], good[3])  # deterministic
        assert ds.bad_records == 2
    warnings = [r for r in caplog.records if r.name == "blurdiff.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per key
    assert keys[2].decode() in warnings[0].getMessage()
    assert [ds[i].shape for i in range(5)] == [(3, 12, 16)] * 5


def test_bad_last_record_wraps_around(tmp_path):
    rng = np.random.default_rng(2)
    keys = sorted(rand_key(rng) for _ in range(3))
    a0 = np.zeros((8, 8, 3), np.uint8)
    good = encode(a0)
    write_lmdb(tmp_path / "w", [(keys[0], good), (keys[1], good), (keys[2], good[: len(good) // 2])])
    ds = LMDBImageDataset(tmp_path / "w", 8)
    torch.testing.assert_close(ds[2], ds[0])
    assert ds.bad_records == 1


def test_all_records_bad_raises(tmp_path):
    rng = np.random.default_rng(3)
    write_lmdb(tmp_path / "allbad", [(rand_key(rng), b"nope %d" % i) for i in range(4)])
    ds = LMDBImageDataset(tmp_path / "allbad", 8)
    with pytest.raises(RuntimeError, match="undecodable"):
        ds[1]


def test_missing_and_empty_paths_raise_with_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    for fn in (open_dataset, LMDBImageDataset, ImageFolderDataset):
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
            fn(missing, 32)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        open_dataset(empty, 32)
    write_lmdb(tmp_path / "emptylmdb", [])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "emptylmdb"))):
        open_dataset(tmp_path / "emptylmdb", 32)


# --------------------------------------------------------------------------------------------
# output folders: only what blurdiff wrote is ever replaced
# --------------------------------------------------------------------------------------------


def _user_files(folder) -> dict:
    """A folder of things the user owns: a note, a photo named like an export, a sub-folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "000000.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    (folder / "photos").mkdir()
    (folder / "photos" / "cat.png").write_bytes(b"cat")
    return snapshot(folder)


def snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_toy_lmdb_never_replaces_what_it_did_not_write(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    before = _user_files(mine)
    monkeypatch.chdir(mine)
    for overwrite in (False, True):  # `--out . --overwrite` once deleted the working folder
        with pytest.raises(FileExistsError, match="not written by blurdiff"):
            make_toy_lmdb(".", n=1, size=8, overwrite=overwrite)
        assert snapshot(mine) == before
    (tmp_path / "file").write_text("mine too")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_toy_lmdb(tmp_path / "file", n=1, size=8, overwrite=True)
    assert (tmp_path / "file").read_text() == "mine too"


def test_toy_lmdb_overwrite_replaces_only_its_own_output(tmp_path):
    out = tmp_path / "toy"
    make_toy_lmdb(out, n=2, size=8, seed=0)
    (out / "notes.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="notes.txt"):
        make_toy_lmdb(out, n=3, size=8, seed=1, overwrite=True)
    assert (out / "notes.txt").read_text() == "added by the user" and len(lmdb_items(out)) == 2
    (out / "notes.txt").unlink()
    make_toy_lmdb(out, n=3, size=8, seed=1, overwrite=True)
    assert len(lmdb_items(out)) == 3
    assert sorted(os.listdir(tmp_path)) == ["toy"]  # no temporary left behind


def test_toy_lmdb_leaves_a_folder_named_like_its_temporary_alone(tmp_path):
    out = tmp_path / "toy"
    for tmp in (tmp_path / "toy.tmp", tmp_path / ".toy.tmp"):
        tmp.mkdir()
        (tmp / "keep.txt").write_text("user data")
    make_toy_lmdb(out, n=2, size=8)
    assert len(lmdb_items(out)) == 2
    for tmp in (tmp_path / "toy.tmp", tmp_path / ".toy.tmp"):
        assert (tmp / "keep.txt").read_text() == "user data"


def test_failed_toy_lmdb_keeps_the_old_one_and_no_temporary(tmp_path, monkeypatch):
    import blurdiff.toy_data as toy_data

    out = tmp_path / "toy"
    make_toy_lmdb(out, n=2, size=8)
    before = lmdb_items(out)
    monkeypatch.setattr(toy_data, "toy_image", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        make_toy_lmdb(out, n=3, size=8, overwrite=True)
    assert lmdb_items(out) == before and sorted(os.listdir(tmp_path)) == ["toy"]


def test_export_never_replaces_what_it_did_not_write(toy8, tmp_path):
    mine = tmp_path / "mine"
    before = _user_files(mine)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not written by blurdiff"):
            export_lmdb_to_folder(toy8, mine, limit=2, overwrite=overwrite)
        assert snapshot(mine) == before
    out = tmp_path / "png"
    assert export_lmdb_to_folder(toy8, out, limit=2) == 2
    (out / "keep.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="keep.txt"):
        export_lmdb_to_folder(toy8, out, limit=3, overwrite=True)
    assert (out / "keep.txt").exists() and len(list(out.glob("*.png"))) == 2


# --------------------------------------------------------------------------------------------
# image folder, flips
# --------------------------------------------------------------------------------------------


def test_image_folder_reader(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {}
    files = ["b/2.png", "a.png", "b/1.JPG", "c/d/x.bmp", "z.webp"]
    for f in files:
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays[f] = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
        fmt = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "webp": "WEBP"}[f.rsplit(".", 1)[1].lower()]
        if fmt == "WEBP" and not WEBP:
            fmt = "PNG"
        p.write_bytes(encode(arrays[f], fmt))
    (tmp_path / "readme.txt").write_text("skip me")
    (tmp_path / ".hidden.png").write_bytes(encode(arrays["a.png"], "PNG"))
    (tmp_path / "grey.png").write_bytes(encode(np.full((5, 7), 200, np.uint8), "PNG"))  # mode L
    ds = open_dataset(tmp_path, (10, 14))
    assert isinstance(ds, ImageFolderDataset)
    assert [ds.key(i) for i in range(len(ds))] == sorted(files + ["grey.png"])
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 10, 14) and x.dtype == torch.float32
        k = ds.key(i)
        if k.endswith((".png", ".bmp", ".webp")) and k in arrays:  # lossless formats: exact
            torch.testing.assert_close(x, torch.from_numpy(arrays[k]).permute(2, 0, 1).float() / 127.5 - 1)
    g = ds[[ds.key(i) for i in range(len(ds))].index("grey.png")]
    assert g.shape == (3, 10, 14)
    torch.testing.assert_close(g, torch.full_like(g, 200 / 127.5 - 1))


def test_decoded_images_are_kept_when_the_data_set_fits_the_budget(toy8, monkeypatch):
    size = len(open_dataset(toy8, 8)) * 3 * 8 * 8
    plain, kept, over = (open_dataset(toy8, 8, hflip=True, cache_bytes=b) for b in (0, size, size - 1))
    reads = {id(d): 0 for d in (plain, kept, over)}
    for d in (plain, kept, over):
        monkeypatch.setattr(
            d, "read_image", lambda i, d=d, read=d.read_image: reads.__setitem__(id(d), reads[id(d)] + 1) or read(i)
        )
    n = len(plain)
    for _ in range(2):  # the second epoch reads what the first kept
        for i in range(n):
            for flip in (False, True):
                want = plain[i, flip]
                assert torch.equal(kept[i, flip], want) and torch.equal(over[i, flip], want)
    assert reads[id(kept)] == n and reads[id(plain)] == reads[id(over)] == 4 * n
    assert len(kept._decoded) == n and not over._decoded and not plain._decoded
    fresh = open_dataset(toy8, 8, cache_bytes=size)
    assert fresh[0] is not None and fresh._decoded and not pickle.loads(pickle.dumps(fresh))._decoded  # per process


def test_hflip_flips_with_seeded_randomness(tmp_path):
    img = split_image(16, 16, 0.5)  # left black, right white
    Image.fromarray(img).save(tmp_path / "a.png")
    plain = ImageFolderDataset(tmp_path, 16)
    assert all(plain[0][:, :, 0].max() < -0.99 for _ in range(5))  # never flipped
    ds = ImageFolderDataset(tmp_path, 16, hflip=True)
    torch.testing.assert_close(ds[(0, True)], plain[0].flip(-1))
    torch.testing.assert_close(ds[(0, False)], plain[0])

    def draws():
        return [bool(ds[0][0, 0, 0] > 0) for _ in range(40)]  # True = flipped

    torch.manual_seed(123)
    a = draws()
    torch.manual_seed(123)
    b = draws()
    assert a == b  # seeded
    assert 5 < sum(a) < 35  # both outcomes occur
    x = ds[0]
    assert torch.equal(x, plain[0]) or torch.equal(x, plain[0].flip(-1))


# --------------------------------------------------------------------------------------------
# DataLoader workers and the infinite loader
# --------------------------------------------------------------------------------------------


def test_dataloader_workers_fork_safe(bad_lmdb):
    path, keys, arrays = bad_lmdb
    ds = LMDBImageDataset(path, (12, 16))
    serial = torch.stack([ds[i] for i in range(len(ds))])  # opens the env in this process first
    assert ds.bad_records == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork", shuffle=False)
    parallel = torch.cat(list(loader))
    torch.testing.assert_close(parallel, serial)
    assert ds.bad_records == 2  # the worker's skip is counted here too (shared counter)

    # each worker reads through an environment it opened itself, not the parent's handle
    class WithPids(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            x = ds[i]
            return x, os.getpid(), ds._pid  # white box: the pid that opened the environment

    got = list(torch.utils.data.DataLoader(WithPids(), batch_size=None, num_workers=2, multiprocessing_context="fork"))
    torch.testing.assert_close(torch.stack([x for x, _, _ in got]), serial)
    assert all(int(p) == int(q) != os.getpid() for _, p, q in got)
    assert ds._pid == os.getpid()
    # picklable (spawn / forkserver workers): no open environment travels
    ds2 = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(ds2[4], serial[4])


class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i)


def take(it, k):
    return [next(it) for _ in range(k)]


def test_infinite_loader_order_sharding_and_resume():
    n, bs = 23, 3
    full = infinite_loader(IndexDataset(n), bs, seed=5)
    assert full.batches_per_epoch == batches_per_epoch(n, bs) == 7
    run = [b.tolist() for b in take(full, 30)]
    assert all(len(b) == bs for b in run)
    assert full.next_batch == 30
    for e in range(4):  # each epoch: distinct samples, a fresh permutation
        ep = sum(run[e * 7 : (e + 1) * 7], [])
        assert len(set(ep)) == 21
    assert run[:7] != run[7:14]
    for k in (0, 1, 6, 7, 15):
        resumed = infinite_loader(IndexDataset(n), bs, seed=5, start_batch=k)
        assert [b.tolist() for b in take(resumed, 30 - k)] == run[k:]
        assert resumed.next_batch == 30
    other_seed = [b.tolist() for b in take(infinite_loader(IndexDataset(n), bs, seed=6), 7)]
    assert other_seed != run[:7]

    # ranks: disjoint within an epoch, same number of batches, DistributedSampler's order
    ws = 2
    bpe = batches_per_epoch(n, bs, ws)
    assert bpe == 3
    ranks = [
        [b.tolist() for b in take(infinite_loader(IndexDataset(n), bs, 5, rank=r, world_size=ws), 2 * bpe)]
        for r in range(ws)
    ]
    for e in range(2):
        s0 = set(sum(ranks[0][e * bpe : (e + 1) * bpe], []))
        s1 = set(sum(ranks[1][e * bpe : (e + 1) * bpe], []))
        assert len(s0) == len(s1) == bpe * bs and s0.isdisjoint(s1)
        for r in range(ws):
            sampler = torch.utils.data.DistributedSampler(
                IndexDataset(n), num_replicas=ws, rank=r, shuffle=True, seed=5, drop_last=True
            )
            sampler.set_epoch(e)
            assert list(sampler) == epoch_indices(n, 5, e, r, ws)
            assert sum(ranks[r][e * bpe : (e + 1) * bpe], []) == epoch_indices(n, 5, e, r, ws)[: bpe * bs]
    resumed_r1 = infinite_loader(IndexDataset(n), bs, 5, rank=1, world_size=ws, start_batch=4)
    assert [b.tolist() for b in take(resumed_r1, 2)] == ranks[1][4:6]

    with pytest.raises(ValueError, match="too small"):
        infinite_loader(IndexDataset(5), 3, world_size=2)


def test_infinite_loader_images_resume_with_flips_and_workers(toy8):
    ds = LMDBImageDataset(toy8, 16, hflip=True)
    torch.manual_seed(0)
    run = take(infinite_loader(ds, 2, seed=1), 10)  # 4 batches per epoch
    assert all(b.shape == (2, 3, 16, 16) for b in run)
    torch.manual_seed(999)  # the process RNG must not matter
    resumed = take(infinite_loader(ds, 2, seed=1, start_batch=6, num_workers=2), 4)
    for a, b in zip(run[6:], resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # flips happen, and a flipped sample is the mirror of the plain one
    plain = LMDBImageDataset(toy8, 16)
    images = torch.stack([plain[i] for i in range(len(plain))])
    flipped = 0
    for b in run:
        for x in b:
            match = [(torch.equal(x, im), torch.equal(x, im.flip(-1))) for im in images]
            assert any(m[0] or m[1] for m in match)
            flipped += any(m[1] and not m[0] for m in match)
    assert 0 < flipped < 20


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def test_export_lmdb_to_folder(bad_lmdb, toy8, tmp_path, caplog):
    path, keys, arrays = bad_lmdb
    out = tmp_path / "png"
    with caplog.at_level(logging.WARNING, logger="blurdiff.data"):
        count = export_lmdb_to_folder(path, out)
    assert count == 4
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == [f"{i:06d}.png" for i in range(4)]
    for i, a in enumerate(arrays[:2] + arrays[3:]):  # the bad 3rd record is skipped, not replaced
        with Image.open(out / f"{i:06d}.png") as im:
            assert im.format == "PNG"
            np.testing.assert_array_equal(np.asarray(im), a)
    assert any(keys[2].decode() in r.getMessage() for r in caplog.records)

    with pytest.raises(FileExistsError):
        export_lmdb_to_folder(toy8, out)
    assert export_lmdb_to_folder(toy8, out, limit=3, resolution=8, overwrite=True) == 3
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["000000.png", "000001.png", "000002.png"]
    assert sorted(os.listdir(tmp_path)) == ["bad", "png"]  # no temporary left behind
    with Image.open(out / "000000.png") as im:
        assert im.size == (8, 8)
