"""The CLI's answer to bad input, hostile files and broken disks: a one-line
``blurdiff CMD: error: ...`` on stderr naming the file (and the flag that fixes it), exit code 2,
nothing of the user's deleted; programming errors keep their traceback."""

from __future__ import annotations

import builtins
import errno
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import blurdiff.cli.data
import blurdiff.fid as fid
import blurdiff.toy_data as toy_data
from blurdiff.cli import main
from blurdiff.fid import save_statistics
from blurdiff.lmdb_file import read_lmdb_meta


def run(capsys, *argv) -> tuple[int, str]:
    """``blurdiff ARGV``: the exit code and stderr, which must be one error line."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("blurdiff ")]
    assert len(lines) == 1, err
    return rc, lines[0]


def pngs(folder, n: int = 2, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "DEFAULT_CACHE_DIR", tmp_path / "fid-cache")


@pytest.fixture
def toy(tmp_path):
    return toy_data.make_toy_lmdb(tmp_path / "toy", n=4, size=8)


# --------------------------------------------------------------------------------------------
# output folders
# --------------------------------------------------------------------------------------------


def test_toy_out_dot_overwrite_keeps_the_working_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    rc, err = run(capsys, "data", "toy", "--out", ".", "--n", 2, "--size", 8, "--overwrite")
    assert rc == 2 and err.startswith("blurdiff data: error: . is not empty and was not written by blurdiff")
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_existing_output_names_the_flag(toy, tmp_path, capsys):
    rc, err = run(capsys, "data", "toy", "--out", toy, "--n", 2, "--size", 8)
    assert rc == 2 and toy in err and "pass --overwrite" in err and "overwrite=True" not in err
    assert main(["data", "export", "--src", toy, "--out", str(tmp_path / "png")]) == 0
    rc, err = run(capsys, "data", "export", "--src", toy, "--out", tmp_path / "png")
    assert rc == 2 and str(tmp_path / "png") in err and "pass --overwrite" in err and "overwrite=True" not in err
    assert main(["data", "export", "--src", toy, "--out", str(tmp_path / "png"), "--overwrite", "--limit", "1"]) == 0


# --------------------------------------------------------------------------------------------
# the file system
# --------------------------------------------------------------------------------------------


def test_permission_denied_names_the_file(tmp_path, monkeypatch, capsys):
    folder = pngs(tmp_path / "s")
    locked = str(folder / "1.png")
    real_open = builtins.open

    def open_as_another_user(path, *args, **kwargs):  # the tests run as root: chmod would not do
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), locked)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_as_another_user)
    rc, err = run(capsys, "spectrum", "--samples", folder, "--data", folder)
    assert rc == 2 and err == f"blurdiff spectrum: error: Permission denied: {locked}"


def test_directory_where_a_file_should_be_and_vice_versa(tmp_path, capsys):
    folder = pngs(tmp_path / "s")
    (tmp_path / "plot.png").mkdir()
    rc, err = run(capsys, "spectrum", "--samples", folder, "--data", folder, "--out", tmp_path / "plot.png")
    plot = tmp_path / "plot.png"
    assert rc == 2 and err == f"blurdiff spectrum: error: {plot} is a directory, not a regular file; " + (
        "give the path of a file to write"
    )
    rc, err = run(capsys, "spectrum", "--samples", folder / "0.png", "--data", folder)
    assert rc == 2 and "not a folder of images" in err and str(folder / "0.png") in err


@pytest.mark.parametrize("command", ["eval", "figures", "spectrum"])
def test_fifo_as_output_is_refused_and_kept(command, toy, tmp_path, capsys):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    folder = pngs(tmp_path / "s")
    argv = {
        "eval": ["eval", "--samples", folder, "--data", toy, "--json", fifo],
        "figures": ["figures", "forward", "--data", toy, "--preset", "toy", "--n", 1, "--out", fifo],
        "spectrum": ["spectrum", "--samples", folder, "--data", folder, "--out", fifo],
    }[command]
    rc, err = run(capsys, *argv)
    assert rc == 2 and err == f"blurdiff {command}: error: {fifo} is a FIFO (named pipe), not a regular file; " + (
        "give the path of a file to write"
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_symlink_as_output_is_written_through(toy, tmp_path, capsys):
    samples, data = pngs(tmp_path / "samples", n=16), pngs(tmp_path / "data", n=32, seed=1)
    for name in ("report.json", "forward.png", "plot.png"):
        (tmp_path / name).symlink_to(tmp_path / "kept" / name)
    (tmp_path / "kept").mkdir()
    assert main(["eval", "--samples", str(samples), "--data", str(data), "--json", str(tmp_path / "report.json")]) == 0
    figure = ["figures", "forward", "--data", str(toy), "--preset", "toy", "--n", "1", "--columns", "2"]
    assert main([*figure, "--out", str(tmp_path / "forward.png")]) == 0
    assert main(["spectrum", "--samples", str(samples), "--data", str(data), "--out", str(tmp_path / "plot.png")]) == 0
    for name in ("report.json", "forward.png", "plot.png"):
        assert (tmp_path / name).is_symlink() and os.readlink(tmp_path / name) == str(tmp_path / "kept" / name)
    assert json.loads((tmp_path / "kept" / "report.json").read_text())["n"] == 16
    for name in ("forward.png", "plot.png"):
        with Image.open(tmp_path / "kept" / name) as im:
            assert im.format == "PNG"
    assert sorted(os.listdir(tmp_path / "kept")) == ["forward.png", "plot.png", "report.json"]


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, -1])
@pytest.mark.parametrize(
    "command",
    [
        ["data", "toy", "--out", "d", "--n", "1", "--size", "8"],
        ["train", "--data", "d", "--preset", "toy", "--out", "r", "--max-steps", "1"],
        ["sample", "--run", "r", "--out", "s", "--n", "1"],
        ["eval", "--samples", "s", "--data", "d"],
        ["figures", "forward", "--data", "d", "--preset", "toy", "--out", "f.png"],
    ],
    ids=lambda c: c[0],
)
def test_seed_out_of_range_names_the_flag(command, seed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--seed", str(seed)])
    err = capsys.readouterr().err.splitlines()[-1]
    name = " ".join(command[:2] if command[0] in ("data", "figures") else command[:1])
    assert exit_.value.code == 2
    assert err == f"blurdiff {name}: error: argument --seed: must be from 0 to 2**63 - 1 ({2**63 - 1}), got {seed}"
    assert os.listdir(tmp_path) == []


def test_forward_figure_of_another_family_is_refused(toy, tmp_path, capsys):
    out = tmp_path / "f.png"
    rc, err = run(capsys, "figures", "forward", "--data", toy, "--preset", "toy-rissanen", "--out", str(out))
    assert rc == 2 and "preset toy-rissanen is of the rissanen family (scripts/head_to_head.py" in err
    assert not out.exists()


def test_largest_seed_works(toy, tmp_path):
    out = tmp_path / "f.png"
    argv = ["figures", "forward", "--data", toy, "--preset", "toy", "--n", "1", "--columns", "2", "--out", str(out)]
    assert main([*argv, "--seed", str(2**63 - 1)]) == 0 and out.is_file()


@pytest.mark.parametrize(
    "scale, message",
    [
        (0, "--scale must be a whole number of at least 1, got 0"),
        (-1, "--scale must be a whole number of at least 1, got -1"),
        (250, "the figure would be 8096x12048 pixels, "),  # 0.3 GB: the check, not the machine, must refuse
    ],
)
def test_figure_scale_is_checked_before_drawing(scale, message, toy, tmp_path, capsys):
    out = tmp_path / "f.png"
    argv = ["figures", "forward", "--data", toy, "--preset", "toy", "--n", 1, "--columns", 2, "--out", out]
    rc, err = run(capsys, *argv, "--scale", scale)
    assert rc == 2 and err.startswith(f"blurdiff figures: error: {message}") and not out.exists()
    assert scale < 1 or err.endswith(
        "pixels, more than the 89478485 a PNG reader opens without a warning; "
        "use a smaller --scale (or fewer --columns or --n)"
    )


# --------------------------------------------------------------------------------------------
# hostile files
# --------------------------------------------------------------------------------------------


def test_undecodable_data_names_the_source(tmp_path, capsys):
    import lmdb

    env = lmdb.open(str(tmp_path / "allbad"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"a" * 40, b"not an image")
    env.close()
    rc, err = run(capsys, "data", "export", "--src", tmp_path / "allbad", "--out", tmp_path / "png")
    assert rc == 2 and "could be decoded" in err and str(tmp_path / "allbad") in err
    assert os.listdir(tmp_path) == ["allbad"]  # no output, no temporary

    folder = pngs(tmp_path / "s")
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc, err = run(capsys, "spectrum", "--samples", folder, "--data", folder)
    assert rc == 2 and "cannot decode" in err and str(folder / "1.png") in err


def test_an_lmdb_at_a_path_that_is_not_utf8_is_written_and_read(tmp_path, capsys):
    folder = tmp_path / os.fsdecode(b"x\xffy")  # a valid name on Linux, which py-lmdb took as text
    assert main(["data", "toy", "--out", str(folder / "t"), "--n", "2", "--size", "8"]) == 0
    assert main(["data", "export", "--src", str(folder / "t"), "--out", str(folder / "png")]) == 0
    assert sorted((folder / "png").glob("*.png")) == [folder / "png" / "000000.png", folder / "png" / "000001.png"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "holds more than 64 MiB: not a JSON file of blurdiff's"),  # /dev/zero: it never ended
        (b'{"process": {"f_max": 0.3}}\xff', "is not UTF-8 text (byte 27 is 0xff): not a JSON file"),
    ],
)
def test_a_config_that_is_endless_or_not_text_is_one_line(content, message, toy, tmp_path, capsys):
    config = "/dev/zero" if content is None else tmp_path / os.fsdecode(b"c\xff.json")
    if content is not None:
        config.write_bytes(content)
    rc, err = run(capsys, *_train_args(toy, tmp_path / "run", "cpu"), "--config", config)
    shown = str(config).encode("utf-8", "backslashreplace").decode()  # as stderr writes what is not UTF-8
    assert rc == 2 and err == f"blurdiff train: error: --config {shown} {message}"


def test_truncated_lmdb_is_one_line_not_a_bus_error(tmp_path):
    toy = toy_data.make_toy_lmdb(tmp_path / "toy", n=64, size=16)
    data = os.path.join(toy, "data.mdb")
    meta = read_lmdb_meta(data)
    full = meta.file_size
    os.truncate(data, full - 4096)  # an interrupted copy
    out = tmp_path / "png"
    cmd = [sys.executable, "-m", "blurdiff", "data", "export", "--src", toy, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    assert done.stderr.splitlines() == [
        f"blurdiff data: error: the lmdb data file {data} is truncated: its meta page says {meta.last_page + 1} "
        f"pages of {meta.page_size} bytes ({full} bytes), the file has {full - 4096} (4096 bytes missing); "
        "copy the data set again"
    ]
    assert not out.exists()


def test_unidentified_image_names_the_file(tmp_path, capsys):
    real, fake = pngs(tmp_path / "real"), pngs(tmp_path / "fake", seed=1)
    (real / "0.png").write_bytes(b"not an image at all")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"checked later")
    rc, err = run(capsys, "fid", "--real", real, "--fake", fake, "--inception-weights", weights)
    assert rc == 2 and "cannot identify image file" in err and str(real / "0.png") in err


def test_truncated_statistics_name_the_file(tmp_path, capsys):
    good = save_statistics(tmp_path / "good.npz", np.zeros(4), np.eye(4))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-40])
    rc, err = run(capsys, "fid", "--real", cut, "--fake", good)
    assert rc == 2 and str(cut) in err and "not a readable .npz" in err
    np.save(tmp_path / "arr.npy", np.zeros(4))
    os.replace(tmp_path / "arr.npy", tmp_path / "arr.npz")
    rc, err = run(capsys, "fid", "--real", good, "--fake", tmp_path / "arr.npz")
    assert rc == 2 and str(tmp_path / "arr.npz") in err


@pytest.mark.parametrize("content", ["garbage", "other network"])
def test_wrong_inception_weights_name_the_file_and_flag(tmp_path, capsys, content):
    real, fake = pngs(tmp_path / "real"), pngs(tmp_path / "fake", seed=1)
    weights = tmp_path / "w.pth"
    if content == "garbage":
        weights.write_bytes(os.urandom(256))
    else:
        torch.save({"fc.weight": torch.zeros(2, 3)}, weights)
    rc, err = run(capsys, "fid", "--real", real, "--fake", fake, "--inception-weights", weights, "--device", "cpu")
    assert rc == 2 and str(weights) in err and "--inception-weights" in err
    assert "is not the FID Inception weights" in err


# --------------------------------------------------------------------------------------------
# broken disks
# --------------------------------------------------------------------------------------------


def test_disk_full_during_export(toy, tmp_path, monkeypatch, capsys):
    def full(self, *args, **kwargs):  # what a write to a full disk raises: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "png"
    rc, err = run(capsys, "data", "export", "--src", toy, "--out", out)
    assert rc == 2 and "no space left" in err and str(out) in err
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize("fmt", ["blurdiff", "diffusers"])
def test_disk_full_while_writing_an_export_leaves_no_folder(fmt, tmp_path, monkeypatch, capsys):
    # What safetensors raises for a short write on a full disk (seen on a 2 MB tmpfs): no errno, no file.
    from helpers import make_run
    from safetensors import SafetensorError

    if fmt == "diffusers":
        pytest.importorskip("diffusers")
    run_dir = make_run(tmp_path / "run")
    real = safetensors.torch.save_file

    def full(*args, **kwargs):
        real(*args, **kwargs)  # the file is begun, then the disk is full
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "e"
    rc, err = run(capsys, "export", "--run", run_dir, "--out", out, "--format", fmt)
    assert (
        rc == 2 and err.startswith("blurdiff export: error: no space left on the device writing ") and str(out) in err
    )
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # nor its temporaries


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])  # a short write to a full tmpfs comes back as EIO
def test_disk_full_while_writing_an_lmdb(code, tmp_path, monkeypatch, capsys):
    import lmdb

    real_open = lmdb.open

    class FullDisk:  # an lmdb whose commits fail as py-lmdb reports ENOSPC: a message, no errno
        def __init__(self, *args, **kwargs):
            self.env = real_open(*args, **kwargs)

        def begin(self, write=False):
            raise lmdb.Error(f"mdb_txn_commit: {os.strerror(code)}")

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(lmdb, "open", FullDisk)
    out = tmp_path / "toy"
    rc, err = run(capsys, "data", "toy", "--out", out, "--n", "4", "--size", "8")
    said = "no space left on the device" if code == errno.ENOSPC else "input/output error on"
    assert rc == 2 and said in err and str(out) in err and "mdb_txn_commit" in err
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_disk_full_while_saving_a_checkpoint(toy, tmp_path, monkeypatch, capsys):
    def short_write(*args, **kwargs):  # torch.save's zip writer on a full disk
        raise RuntimeError(
            "[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed "
            "writing file data/0: file write failed\nunexpected pos 1024 vs 512"
        )

    monkeypatch.setattr(torch, "save", short_write)
    rc, err = run(
        capsys,
        "train",
        "--data",
        toy,
        "--preset",
        "toy",
        "--out",
        tmp_path / "run",
        "--max-steps",
        1,
        "--batch-size",
        2,
        "--resolution",
        8,
        "--no-progress",
        "--device",
        "cpu",
        "--num-workers",
        0,
    )
    assert rc == 2 and "disk full" in err


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def _train_args(toy, out, device):
    return [
        "train", "--data", toy, "--preset", "toy", "--out", out, "--max-steps", 1, "--batch-size", 2,
        "--resolution", 8, "--no-progress", "--num-workers", 0, "--no-final-check", "--device", device,
    ]  # fmt: skip


def _sample_args(run_dir, out, device):
    return ["sample", "--run", run_dir, "--out", out, "--n", 2, "--batch-size", 2, "--quiet", "--device", device]


@pytest.mark.parametrize("command", ["sample", "train"])
@pytest.mark.parametrize(
    "device, message",
    [
        ("meta", "--device meta holds no data"),
        ("xpu", "--device xpu: xpu is not available here"),
        ("cuda", "--device cuda: CUDA is not available on this machine"),
        ("cuda:0", "--device cuda:0: CUDA is not available on this machine"),
        ("nope", "--device 'nope' is not a device"),
    ],
)
def test_unusable_device_is_refused_before_anything_is_written(
    command, device, message, toy, tmp_path, monkeypatch, capsys
):
    from helpers import make_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine's case, on any machine
    out = tmp_path / "out"
    args = _train_args if command == "train" else _sample_args
    source = toy if command == "train" else make_run(tmp_path / "run")
    rc, err = run(capsys, *args(source, out, device))
    assert rc == 2 and err.startswith(f"blurdiff {command}: error: {message}") and err.endswith("(available here: cpu)")
    assert not out.exists()  # no folder, no lock file, no sample.json
    out.mkdir()  # an existing (empty) folder is left as it was too
    rc, err = run(capsys, *args(source, out, device))
    assert rc == 2 and err.startswith(f"blurdiff {command}: error: {message}") and os.listdir(out) == []
    assert main([str(a) for a in args(source, out, "cpu")]) == 0  # the folder is still usable
    assert (out / ("000001.png" if command == "sample" else "config.json")).is_file()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("process.sigma=1e300", "sigma must lie in [1e-06, 1e+06], got 1e+300"),  # was an OverflowError
        ("process.sigma=1e-300", "sigma must lie in [1e-06, 1e+06], got 1e-300"),  # was a LinAlgError
        ("process.f_max=1e300", "f_max must lie in [0, 1000], got 1e+300"),  # trained, then sampled NaN
        ("unet.model_channels=1048576", "a UNet of model_channels=1048576, channel_mult=[1, 1, 2] (933,485,655"),
        ("process.family=heat", "family must be one of ('lee', 'hoogeboom', 'rissanen'), got 'heat'"),
        ("process.d_min=1", "d_min must lie in [0, 1), got 1"),
        ("process.noise_sigma=0", "noise_sigma must lie in (0, inf], got 0"),
        ("process.family=rissanen", "the rissanen family runs in the DCT basis: set basis='dct', got basis='gaussian'"),
    ],
)
def test_settings_that_cannot_work_are_one_line_naming_the_field_and_range(setting, message, toy, tmp_path, capsys):
    rc, err = run(capsys, *_train_args(toy, tmp_path / "run", "cpu"), "--set", setting)
    assert rc == 2 and err.startswith(f"blurdiff train: error: {message}"), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_batch_too_large_for_the_device_is_refused_before_the_folder_is_made(toy, tmp_path, monkeypatch, capsys):
    import blurdiff.devices

    monkeypatch.setattr(blurdiff.devices, "_memory_bytes", lambda device: 2**20)  # a 1 MiB machine
    out = tmp_path / "run"
    argv = _train_args(toy, out, "cpu")
    # 64 images of 8x8 with the toy network's 64 channels: more than 1 MiB before anything else.
    rc, err = run(capsys, *argv, "--batch-size", 64)
    assert rc == 2 and err.startswith("blurdiff train: error: --batch-size 64: one batch needs at least 1.0 MiB on cpu")
    assert err.endswith("use a smaller --batch-size") and not out.exists()
    monkeypatch.undo()  # the toy network's weights alone are more than 1 MiB (blurdiff.unet.check_fits_memory)
    assert main([str(a) for a in argv]) == 0 and (out / "config.json").is_file()  # --batch-size 2 fits


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):  # what torch's CPU allocator raises
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(blurdiff.cli.data, "make_toy_lmdb", no_memory)
    rc, err = run(capsys, "data", "toy", "--out", tmp_path / "t", "--n", 1, "--size", 8)
    assert rc == 2 and err.startswith("blurdiff data: error: out of memory ([enforce fail at alloc_cpu.cpp:127]")
    assert "use a smaller --batch-size" in err


# --------------------------------------------------------------------------------------------
# programming errors are not bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [TypeError("a bug"), KeyError("a bug"), RuntimeError("a bug"), OSError("a bug")])
def test_programming_errors_keep_their_traceback(tmp_path, monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(blurdiff.cli.data, "make_toy_lmdb", broken)
    with pytest.raises(type(error), match="a bug"):
        main(["data", "toy", "--out", str(tmp_path / "t"), "--n", "1", "--size", "8"])
