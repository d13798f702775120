"""``blurdiff sample`` (blurdiff/sample_folder.py) and ``blurdiff figures`` (blurdiff/figures.py).

Checkpoints are made here in the documented format (blurdiff/checkpoint.py): a tiny UNet at
16x16 with random weights and a 20-step process, so every sampling run takes well under a second.
"""

import contextlib
import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PROCESS, RES, STEPS, cannot_compile, make_run
from PIL import Image

import blurdiff.sample_folder as sample_mod
import blurdiff.samplers as samplers
from blurdiff.checkpoint import checkpoint_path, save_checkpoint
from blurdiff.devices import CompiledNetwork
from blurdiff.images import upscale_factor

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def cli(*argv) -> int:
    """``blurdiff sample …`` through the real CLI when it builds, else the module's own parser."""
    if importlib.util.find_spec("blurdiff.train") is not None:
        from blurdiff.cli import main

        return main(["sample", *map(str, argv)])
    import argparse
    import sys

    from blurdiff.cli import sample as sample_cli

    p = argparse.ArgumentParser()
    sample_cli.add_arguments(p)
    try:
        return sample_cli.run(p.parse_args([*map(str, argv)]))
    except (FileNotFoundError, ValueError) as e:
        print(f"blurdiff sample: error: {e}", file=sys.stderr)
        return 2


def sample(run, out, n, *extra):
    return cli("--run", run, "--out", out, "--n", n, "--batch-size", 5, "--quiet", *extra)


def pngs(folder: Path):
    return sorted(p.name for p in Path(folder).glob("[0-9]*.png"))


def stat(folder: Path):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in Path(folder).glob("[0-9]*.png")}


# --------------------------------------------------------------------------- images
def test_writes_n_pngs_at_the_resolution(run, tmp_path):
    assert sample(run, tmp_path / "s", 7) == 0
    assert pngs(tmp_path / "s") == [f"{i:06d}.png" for i in range(7)]
    for name in pngs(tmp_path / "s"):
        with Image.open(tmp_path / "s" / name) as im:
            assert im.size == (RES, RES) and im.mode == "RGB"
    assert (tmp_path / "s" / "sample.json").is_file()
    assert not list((tmp_path / "s").glob("*.tmp"))
    images = [np.asarray(Image.open(tmp_path / "s" / n)) for n in pngs(tmp_path / "s")]
    assert len({im.tobytes() for im in images}) == 7  # different samples


def test_reproducible_and_seeded(run, tmp_path):
    for d in ("a", "b"):
        assert sample(run, tmp_path / d, 6, "--seed", 3) == 0
    assert sample(run, tmp_path / "c", 6, "--seed", 4) == 0
    a, b, c = (stat(tmp_path / d) for d in "abc")
    assert {k: v[2] for k, v in a.items()} == {k: v[2] for k, v in b.items()}
    assert all(a[k][2] != c[k][2] for k in a)


def test_larger_n_adds_images_and_leaves_the_first_untouched(run, tmp_path):
    assert sample(run, tmp_path / "s", 8) == 0  # batches of 5: [0..4], [5..7] of a full batch
    before = stat(tmp_path / "s")
    assert sample(run, tmp_path / "s", 12) == 0
    after = stat(tmp_path / "s")
    assert sorted(after) == [f"{i:06d}.png" for i in range(12)]
    assert {k: after[k] for k in before} == before  # same inode, mtime and bytes
    # Image i does not depend on --n: one run of 12 makes the same files.
    assert sample(run, tmp_path / "once", 12) == 0
    assert {k: v[2] for k, v in stat(tmp_path / "once").items()} == {k: v[2] for k, v in after.items()}


@contextlib.contextmanager
def interrupted_at_image(k: int, monkeypatch):
    """Within the block, writing the ``k``-th image raises KeyboardInterrupt (a Ctrl-C mid-run)."""
    real_save, calls = sample_mod.save_png, []

    def crashing_save(image, path):
        if len(calls) == k - 1:
            raise KeyboardInterrupt
        calls.append(path)
        real_save(image, path)

    with monkeypatch.context() as patched:
        patched.setattr(sample_mod, "save_png", crashing_save)
        yield


def test_resume_after_interruption(run, tmp_path, monkeypatch):
    out = tmp_path / "s"
    with interrupted_at_image(8, monkeypatch), pytest.raises(KeyboardInterrupt):
        sample(run, out, 13)
    assert pngs(out) == [f"{i:06d}.png" for i in range(7)]
    (out / ".000007.png.tmp-99999").write_bytes(b"half a png")  # what a kill during a write leaves
    before = stat(out)

    assert sample(run, out, 13) == 0
    after = stat(out)
    assert sorted(after) == [f"{i:06d}.png" for i in range(13)]
    assert {k: after[k] for k in before} == before  # nothing rewritten
    assert not list(out.glob(".*.tmp-*"))
    assert sample(run, tmp_path / "ref", 13) == 0  # the same as an uninterrupted run
    assert {k: v[2] for k, v in stat(tmp_path / "ref").items()} == {k: v[2] for k, v in after.items()}


def test_resume_makes_empty_and_torn_pngs_again(run, tmp_path):
    out = tmp_path / "s"
    assert sample(run, out, 7) == 0
    made = stat(out)
    # What a crash or a full disk leaves under a final name: an empty file, half a file.
    (out / "000002.png").write_bytes(b"")
    (out / "000005.png").write_bytes(made["000005.png"][2][: len(made["000005.png"][2]) // 2])

    assert sample(run, out, 7, "--grid") == 0
    after = stat(out)
    assert {k: v[2] for k, v in after.items()} == {k: v[2] for k, v in made.items()}  # the same images again
    assert {k: after[k] for k in made if k not in ("000002.png", "000005.png")} == {
        k: made[k] for k in made if k not in ("000002.png", "000005.png")
    }  # the others untouched
    with Image.open(out / "figures" / "grid.png") as im:
        assert im.size[0] > 3 * RES


def png_pixels(folder: Path, n: int) -> np.ndarray:
    """Images 0 … n-1 of the folder as PIL decodes them, stacked: what an npz of them must hold."""
    return np.stack([np.asarray(Image.open(Path(folder) / f"{i:06d}.png").convert("RGB")) for i in range(n)])


def test_npz_holds_the_pngs_in_guided_diffusions_format(run, tmp_path, capsys):
    capsys.readouterr()
    assert sample(run, tmp_path / "s", 7, "--npz") == 0
    path = tmp_path / "s" / f"samples_7x{RES}x{RES}x3.npz"
    assert f"npz: {path}" in capsys.readouterr().out
    with np.load(path) as f:  # guided-diffusion's evaluations/evaluator.py: np.load(path)["arr_0"]
        assert list(f.keys()) == ["arr_0"]
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (7, RES, RES, 3)
    assert np.array_equal(arr, png_pixels(tmp_path / "s", 7))  # in index order
    assert not list((tmp_path / "s").glob(".*.tmp-*"))


def test_npz_of_images_made_by_an_earlier_interrupted_call(run, tmp_path, monkeypatch):
    from blurdiff.sample_folder import sample_to_folder

    out = tmp_path / "s"
    with interrupted_at_image(8, monkeypatch), pytest.raises(KeyboardInterrupt):
        sample(run, out, 13, "--npz")
    assert not list(out.glob("*.npz"))  # not before the folder holds all N images

    report = sample_to_folder(run=run, n=13, out=out, batch_size=5, quiet=True, npz=True)
    assert report.written == 6 and report.npz == out / f"samples_13x{RES}x{RES}x3.npz"
    assert np.array_equal(np.load(report.npz)["arr_0"], png_pixels(out, 13))
    # A folder that is already complete: nothing sampled, the npz made from its PNGs (the first 10).
    report = sample_to_folder(run=run, n=10, out=out, batch_size=5, quiet=True, npz=True)
    assert report.written == 0 and report.npz.name == f"samples_10x{RES}x{RES}x3.npz"
    assert np.array_equal(np.load(report.npz)["arr_0"], png_pixels(out, 10))
    assert sample_to_folder(run=run, n=10, out=out, batch_size=5, quiet=True).npz is None  # only when asked


def test_save_png_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    import os

    from blurdiff.images import save_png

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_png(torch.zeros(3, 4, 4), tmp_path / "000000.png")
    # The file before its rename (the same inode after it), then the folder that holds the new name.
    assert synced == [(tmp_path / "000000.png").stat().st_ino, tmp_path.stat().st_ino]


def test_batch_seed_depends_on_seed_first_and_batch_size():
    from blurdiff.sample_folder import batch_seed

    seeds = {batch_seed(s, f, b) for s in (0, 1) for f in (0, 5) for b in (5, 6)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def test_only_other_settings_are_an_other_settings_error(run, tmp_path):
    kw = dict(run=run, n=2, steps=5, batch_size=2, device="cpu", quiet=True)
    sample_mod.sample_to_folder(out=tmp_path / "s", **kw)
    with pytest.raises(sample_mod.OtherSettingsError, match="other settings .*seed: 0 there, 9 now"):
        sample_mod.sample_to_folder(out=tmp_path / "s", seed=9, **kw)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(tmp_path / "s" / "000000.png", foreign / "000000.png")
    with pytest.raises(ValueError, match="holds numbered PNGs but no sample.json: not a folder this command") as e:
        sample_mod.sample_to_folder(out=foreign, **kw)
    assert not isinstance(e.value, sample_mod.OtherSettingsError)  # scripts/table1.py remakes only the former
    assert (foreign / "000000.png").is_file()


def test_other_settings_are_refused_in_the_same_folder(run, tmp_path, capsys):
    assert sample(run, tmp_path / "s", 3) == 0
    capsys.readouterr()
    assert sample(run, tmp_path / "s", 6, "--seed", 9) != 0
    err = capsys.readouterr().err
    assert "seed" in err and "other settings" in err
    assert pngs(tmp_path / "s") == [f"{i:06d}.png" for i in range(3)]


def test_too_large_batch_size_is_refused_before_the_folder_is_touched(run, tmp_path, capsys):
    out = tmp_path / "s"
    # 10**9 images of 16x16: terabytes, refused by the check (nothing is allocated).
    rc, err = _error(capsys, "--run", run, "--out", out, "--n", 2, "--batch-size", 10**9, "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("blurdiff sample: error: --batch-size 1000000000: one batch needs at least ")
    assert err.strip().endswith("use a smaller --batch-size") and not out.exists()
    assert cli("--run", run, "--out", out, "--n", 2, "--batch-size", 2, "--quiet") == 0 and len(pngs(out)) == 2


def test_a_failed_first_batch_leaves_the_folder_usable(run, tmp_path, monkeypatch, capsys):
    from blurdiff.samplers import Sampler

    def no_memory(*args, **kwargs):  # a batch too large for the machine: torch's CPU allocator
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes.")

    out = tmp_path / "s"
    with monkeypatch.context() as patched:
        patched.setattr(Sampler, "sample", no_memory)
        rc, err = _error(capsys, "--run", run, "--out", out, "--n", 4, "--batch-size", 4, "--quiet")
    assert rc == 2 and err.startswith("blurdiff sample: error: out of memory (DefaultCPUAllocator")
    assert not (out / "sample.json").exists() and pngs(out) == []
    # The ledger binds nothing yet: another batch size (what the user does next) is accepted.
    assert sample(run, out, 4) == 0 and pngs(out) == [f"{i:06d}.png" for i in range(4)]
    assert json.loads((out / "sample.json").read_text())["batch_size"] == 5


def test_a_ledger_of_no_images_does_not_bind_the_folder(run, tmp_path):
    """What an older version left after a failed first batch (``--device meta``, a batch that
    did not fit): a sample.json, and maybe a statistics line, but no image."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "sample.json").write_text(json.dumps({"device": "meta", "batch_size": 10**9, "seed": 3}))
    (out / "raw_stats.jsonl").write_text('{"batch": 0, "stats": {"count": 1}}\n')
    assert sample(run, out, 3) == 0 and pngs(out) == [f"{i:06d}.png" for i in range(3)]
    ledger = json.loads((out / "sample.json").read_text())
    assert (ledger["device"], ledger["batch_size"], ledger["seed"]) == ("cpu", 5, 0)
    assert all(json.loads(line)["stats"]["count"] > 1 for line in (out / "raw_stats.jsonl").read_text().splitlines())
    assert sample(run, out, 3, "--seed", 9) == 2  # now it binds


def test_ema_and_samplers(run, tmp_path):
    assert sample(run, tmp_path / "ema", 2) == 0
    assert sample(run, tmp_path / "raw", 2, "--no-ema") == 0
    assert sample(run, tmp_path / "ddim", 2, "--sampler", "ddim", "--steps", 5) == 0
    assert sample(run, tmp_path / "anc", 2, "--sampler", "ancestral", "--steps", 5) == 0
    got = [stat(tmp_path / d)["000000.png"][2] for d in ("ema", "raw", "ddim", "anc")]
    assert len(set(got)) == 4


def test_sample_to_folder_is_the_command_from_python(run, tmp_path):
    from blurdiff.sample_folder import sample_to_folder

    assert sample(run, tmp_path / "cli", 6, "--trajectory") == 0
    plans = []
    report = sample_to_folder(
        run=run, n=6, out=tmp_path / "py", batch_size=5, trajectory=True, quiet=True, on_plan=plans.append
    )
    assert {k: v[2] for k, v in stat(tmp_path / "py").items()} == {k: v[2] for k, v in stat(tmp_path / "cli").items()}
    assert [(p.present, p.to_make, p.n, p.sampler, p.num_timesteps) for p in plans] == [(0, 6, 6, "ddpm", STEPS)]
    assert report.plan is plans[0] and report.written == 6 and report.raw.count == 2 * 5 * RES * RES  # two full batches
    assert report.trajectory == (
        tmp_path / "py" / "figures" / "trajectory.png",
        tmp_path / "py" / "figures" / "trajectory_x0.png",
    )
    assert all(p.is_file() for p in report.trajectory) and report.grid is None
    assert (tmp_path / "py" / "stats.json").is_file()
    # Again: nothing to make, the same report of the folder's raw values.
    again = sample_to_folder(run=run, n=6, out=tmp_path / "py", batch_size=5, quiet=True)
    assert again.written == 0 and again.plan.present == 6 and again.raw == report.raw


# --------------------------------------------------------------------------- trajectory
def test_trajectory(run, tmp_path):
    out = tmp_path / "s"
    assert sample(run, out, 3, "--trajectory", "--trajectory-samples", 2, "--trajectory-frames", 6) == 0
    s = upscale_factor(RES)
    cell, pad = RES * s, 2
    for name in ("trajectory.png", "trajectory_x0.png"):
        with Image.open(out / "figures" / name) as im:
            assert im.size == (6 * (cell + pad) + pad, 2 * (cell + pad) + pad)
    # Each row ends with the sample it became.
    strip = np.asarray(Image.open(out / "figures" / "trajectory.png"))
    for row in range(2):
        y, x = pad + row * (cell + pad), pad + 5 * (cell + pad)
        last = strip[y : y + cell : s, x : x + cell : s]
        assert np.array_equal(last, np.asarray(Image.open(out / f"{row:06d}.png")))
    # Asked again when every image exists: the figures are redrawn, the images left alone.
    (out / "figures" / "trajectory.png").unlink()
    before = stat(out)
    assert sample(run, out, 3, "--trajectory", "--trajectory-samples", 2, "--trajectory-frames", 6) == 0
    assert (out / "figures" / "trajectory.png").is_file() and stat(out) == before


def test_grid_shows_the_images_of_the_folder(run, tmp_path):
    out = tmp_path / "s"
    assert sample(run, out, 5, "--grid") == 0
    s = upscale_factor(RES)
    cell, pad = RES * s, 2
    grid = np.asarray(Image.open(out / "figures" / "grid.png"))
    assert grid.shape[:2] == (2 * (cell + pad) + pad, 3 * (cell + pad) + pad)  # 5 images: 3 per row
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = pad + r * (cell + pad), pad + c * (cell + pad)
        assert np.array_equal(grid[y : y + cell : s, x : x + cell : s], np.asarray(Image.open(out / f"{i:06d}.png")))


# --------------------------------------------------------------------------- errors
def _error(capsys, *argv):
    capsys.readouterr()
    rc = cli(*argv)
    return rc, capsys.readouterr().err


def test_missing_run_or_checkpoint(tmp_path, capsys, run):
    rc, err = _error(capsys, "--run", tmp_path / "nope", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "nope" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, err = _error(capsys, "--run", tmp_path / "empty", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "no checkpoints" in err
    rc, err = _error(capsys, "--run", run, "--ckpt", "ckpt-99999999.pt", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "ckpt-99999999.pt" in err
    rc, err = _error(capsys, "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "--run" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_preset(tmp_path, capsys):
    other = make_run(tmp_path / "other", preset="lsun64-quartic")
    rc, err = _error(capsys, "--run", other, "--preset", "toy", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "lsun64-quartic" in err and "'toy'" in err
    rc, err = _error(capsys, "--run", other, "--preset", "no-such", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "no-such" in err


def test_corrupt_checkpoint(tmp_path, capsys):
    path = checkpoint_path(tmp_path / "bad", 5)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a checkpoint" * 10)
    rc, err = _error(capsys, "--run", tmp_path / "bad", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and path.name in err
    # Loadable, but its weights do not fit the network its config describes.
    state = torch.load(checkpoint_path(make_run(tmp_path / "ok"), 100), weights_only=True)
    state["ema"] = {k: v[..., :1] for k, v in state["ema"].items()}
    save_checkpoint(state, checkpoint_path(tmp_path / "ok", 200))
    rc, err = _error(capsys, "--run", tmp_path / "ok", "--n", 1, "--out", tmp_path / "o")
    assert rc != 0 and "ckpt-00000200.pt" in err


def test_foreign_png_folder_is_refused(run, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "o" / "000000.png")
    rc, err = _error(capsys, "--run", run, "--n", 2, "--out", tmp_path / "o")
    assert rc != 0 and "sample.json" in err


# --------------------------------------------------------------------------- figures
def test_forward_figure(tmp_path):
    from blurdiff.diffusion import BlurDiffusion, ProcessConfig
    from blurdiff.figures import forward_process_figure, forward_rows

    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = forward_process_figure(data, tmp_path / "fig" / "forward.png", "toy", n=2, columns=5)
    with Image.open(out) as im:
        assert im.size[0] > 5 * 64 and im.size[1] > 6 * 64  # 5 columns, 2 images x 3 rows, cells >= 64 px

    p = BlurDiffusion(ProcessConfig(**{**PROCESS, "num_timesteps": 1000}))
    x0 = torch.rand(2, 3, RES, RES) * 2 - 1
    noisy, c2f, f2c = forward_rows(x0, p, [0, 500, 1000])
    assert torch.equal(noisy[0], x0) and torch.equal(c2f[0], x0) and torch.equal(f2c[0], x0)
    # The means are the noise-free forward process; the two directions differ.
    t = torch.full((2,), 500)
    torch.testing.assert_close(c2f[1], p.q_sample(x0, t, torch.zeros_like(x0)))
    assert (c2f[1] - f2c[1]).abs().max() > 1e-2
    assert (noisy[2] - c2f[2]).std() > 0.5  # mostly noise at t = N


@pytest.mark.skipif(importlib.util.find_spec("blurdiff.train") is None, reason="the CLI needs blurdiff.train")
def test_figures_cli(tmp_path):
    from blurdiff.cli import main

    data = tmp_path / "imgs"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(data / "a.png")
    assert (
        main(
            [
                "figures",
                "forward",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "f.png"),
                "--preset",
                "toy",
                "--n",
                "1",
                "--columns",
                "3",
            ]
        )
        == 0
    )
    assert (tmp_path / "f.png").is_file()
    assert (
        main(
            [
                "figures",
                "forward",
                "--data",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "g.png"),
                "--preset",
                "toy",
            ]
        )
        != 0
    )


def test_a_huge_n_plans_from_one_listing_of_the_folder(run, tmp_path, monkeypatch):
    # --n 1000000000 looked up every file name before the first image: 10⁹ stat calls.
    out = tmp_path / "o"
    sample_mod.sample_to_folder(run=run, n=3, out=out, batch_size=2, quiet=True)  # 3 images there
    looked_up = []
    real = sample_mod._is_complete_png
    monkeypatch.setattr(sample_mod, "_is_complete_png", lambda path: looked_up.append(path.name) or real(path))

    class Planned(Exception):
        pass

    def stop(plan):
        assert plan.present == 3 and plan.to_make == 10**9 - 3
        raise Planned

    with pytest.raises(Planned):
        sample_mod.sample_to_folder(run=run, n=10**9, out=out, batch_size=2, quiet=True, on_plan=stop)
    assert sorted(looked_up) == ["000000.png", "000001.png", "000002.png"]
    # The images already there are kept, and the batch that lacks one is made again.
    report = sample_mod.sample_to_folder(run=run, n=5, out=out, batch_size=2, quiet=True)
    assert report.written == 2 and report.plan.present == 3


# scripts/sampler_table.py: every sampler at several K, sampled in memory in blurdiff sample's batches
def test_sampler_table_scores_every_cell_and_resumes(run, tmp_path, toy_lmdb_of, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("sampler_table", ROOT / "scripts" / "sampler_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "table.json"
    argv = ["--run", run, "--data", toy_lmdb_of(32, RES, seed=1), "--samplers", "ddpm", "ddim", "--steps", 4, STEPS]
    argv += ["--n", 16, "--seeds", 0, 1, "--batch-size", 8, "--json", out]
    monkeypatch.setattr(sys, "argv", ["sampler_table.py", *map(str, argv)])
    script.main()
    table = json.loads(out.read_text())
    assert [(r["sampler"], r["K"]) for r in table["rows"]] == [("ddpm", STEPS), ("ddim", 4), ("ddim", STEPS)]
    assert (table["step"], table["n"], table["seeds"]) == (100, 16, [0, 1])
    assert set(table["floor"]) == {"swd_avg", "spectrum_error", "channel_std_error"}
    for row in table["rows"]:
        assert all(len(row[k]) == 2 for k in ("swd_avg", "spectrum_error", "channel_std_error", "std", "verdicts"))
    printed = capsys.readouterr().out
    assert "| ddim | 4 | none |" in printed and "data noise floor: swd_avg" in printed
    # A cell's samples are blurdiff sample's with that seed and batch size, before the PNG rounding.
    report = sample_mod.sample_to_folder(
        run=run, n=16, out=tmp_path / "s", sampler="ddim", steps=4, seed=1, batch_size=8, device="cpu", quiet=True
    )
    assert table["rows"][1]["std"][1] == pytest.approx(report.raw.summary()["overall_std"], abs=1e-6)

    # Again: every cell is read back from the JSON, nothing is sampled.
    def refuse(*a, **k):
        raise AssertionError("a finished cell sampled again")

    monkeypatch.setattr(samplers.Sampler, "sample", refuse)
    script.main()
    assert json.loads(out.read_text()) == table
    assert "| ddim | 4 | none |" in capsys.readouterr().out
    # A table without the batch size (before 0.2 its noise was drawn otherwise) is measured again.
    out.write_text(json.dumps({k: v for k, v in table.items() if k != "batch_size"}))
    with pytest.raises(AssertionError, match="sampled again"):
        script.main()
    # --amp: a row per precision, on the same seeds.
    monkeypatch.undo()
    amp_argv = argv + ["--json", tmp_path / "amp.json", "--samplers", "ddim", "--steps", 4, "--seeds", 0]
    monkeypatch.setattr(sys, "argv", ["sampler_table.py", *map(str, amp_argv + ["--amp", "none", "bf16"])])
    script.main()
    rows = {(r["sampler"], r["K"], r.get("amp")): r for r in json.loads((tmp_path / "amp.json").read_text())["rows"]}
    assert list(rows) == [("ddim", 4, "none"), ("ddim", 4, "bf16")]
    assert rows[("ddim", 4, "none")]["std"] == table["rows"][1]["std"][:1]  # seed 0: the same cell
    bf16 = rows[("ddim", 4, "bf16")]["std"]
    assert bf16 != table["rows"][1]["std"][:1] and bf16 == pytest.approx(table["rows"][1]["std"][:1], rel=0.02)


# --compile: the network under torch.compile, recorded in the folder
def _pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])


def test_compile_falls_back_with_a_warning_and_binds_the_folder(run, tmp_path, monkeypatch):
    kw = dict(run=run, n=4, steps=5, batch_size=4, device="cpu", quiet=True)
    sample_mod.sample_to_folder(out=tmp_path / "eager", **kw)

    monkeypatch.setattr(torch, "compile", cannot_compile)
    with pytest.warns(UserWarning, match=r"torch.compile failed here \(RuntimeError\); the network runs uncompiled"):
        sample_mod.sample_to_folder(out=tmp_path / "compiled", compile=True, **kw)
    assert np.array_equal(_pixels(tmp_path / "compiled"), _pixels(tmp_path / "eager"))
    assert json.loads((tmp_path / "compiled" / "sample.json").read_text())["compiled"] is True
    # A folder is continued only as it was begun (compiled samples equal eager ones within rounding).
    for folder, again in (("eager", True), ("compiled", False)):
        (tmp_path / folder / "000003.png").unlink()
        with pytest.raises(ValueError, match="compiled: (None there, True now|True there, None now)"):
            sample_mod.sample_to_folder(out=tmp_path / folder, compile=again, **kw)


def test_command_line_amp_and_cuda_graph(run, tmp_path, capsys):
    assert sample(run, tmp_path / "s", 2, "--steps", 5, "--amp", "bf16") == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["amp"] == "bf16"
    capsys.readouterr()
    assert sample(run, tmp_path / "g", 2, "--cuda-graph", "--device", "cpu") == 2
    assert "--cuda-graph needs a CUDA device, got --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_a_compiled_network_falls_back_only_on_its_first_call(monkeypatch):
    def compiles_then_fails(model, **options):
        calls = []

        def run(*args):
            calls.append(args)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            return model(*args)

        return run

    monkeypatch.setattr(torch, "compile", compiles_then_fails)
    net, x = CompiledNetwork(torch.nn.Identity()), torch.ones(2)
    assert torch.equal(net(x), x)  # it compiled: what fails later is the network's own error ...
    with pytest.raises(RuntimeError, match="out of memory"):
        net(x)  # ... raised, not hidden behind an uncompiled run


def test_amp_bf16_samples_equal_float32_within_its_rounding_and_bind_the_folder(run, tmp_path):
    kw = dict(run=run, n=4, steps=5, batch_size=4, device="cpu", quiet=True)
    fp32 = sample_mod.sample_to_folder(out=tmp_path / "fp32", **kw)
    bf16 = sample_mod.sample_to_folder(out=tmp_path / "bf16", amp="bf16", **kw)
    diff = np.abs(_pixels(tmp_path / "bf16") - _pixels(tmp_path / "fp32"))
    assert 0 < diff.max() <= 8 and diff.mean() < 1  # the network ran in bf16, close to float32
    assert bf16.raw.summary()["overall_std"] == pytest.approx(fp32.raw.summary()["overall_std"], rel=0.02)
    assert json.loads((tmp_path / "bf16" / "sample.json").read_text())["amp"] == "bf16"
    for folder, again in (("fp32", "bf16"), ("bf16", "none")):
        (tmp_path / folder / "000003.png").unlink()
        with pytest.raises(ValueError, match="amp: (None there, 'bf16' now|'bf16' there, None now)"):
            sample_mod.sample_to_folder(out=tmp_path / folder, amp=again, **kw)
    with pytest.raises(ValueError, match=r"--amp must be one of \['bf16', 'fp16', 'none'\], got 'fp8'"):
        sample_mod.sample_to_folder(out=tmp_path / "bad", amp="fp8", **kw)
    assert not (tmp_path / "bad").exists()  # refused before the folder is made


def test_cuda_graph_is_refused_off_cuda_before_the_folder_is_made(run, tmp_path):
    with pytest.raises(ValueError, match="--cuda-graph needs a CUDA device, got --device cpu"):
        sample_mod.sample_to_folder(run=run, n=4, out=tmp_path / "s", device="cpu", cuda_graph=True, quiet=True)
    assert not (tmp_path / "s").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_folder_holds_the_eager_images(run, tmp_path):
    kw = dict(run=run, n=8, steps=5, batch_size=4, device="cuda", quiet=True)
    sample_mod.sample_to_folder(out=tmp_path / "eager", **kw)
    sample_mod.sample_to_folder(out=tmp_path / "graph", cuda_graph=True, **kw)
    assert np.array_equal(_pixels(tmp_path / "graph"), _pixels(tmp_path / "eager"))


@pytest.mark.slow
def test_compiled_samples_equal_the_eager_ones_within_rounding(run, tmp_path):
    kw = dict(run=run, n=4, steps=5, batch_size=4, device="cpu", quiet=True)
    eager = sample_mod.sample_to_folder(out=tmp_path / "eager", **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = sample_mod.sample_to_folder(out=tmp_path / "compiled", compile=True, **kw)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # it did compile
    assert np.abs(_pixels(tmp_path / "compiled") - _pixels(tmp_path / "eager")).max() <= 1
    assert compiled.raw.summary()["overall_std"] == pytest.approx(eager.raw.summary()["overall_std"], rel=1e-4)
