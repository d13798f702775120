"""The quality yardstick (blurdiff/quality.py) and `blurdiff eval`: known cases, the divergence
guard, and bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blurdiff.cli import main as cli_main
from blurdiff.images import save_png
from blurdiff.quality import (
    collapse_pyramid,
    evaluate,
    laplacian_pyramid,
    load_data_images,
    sliced_wasserstein,
)
from blurdiff.sample_guard import SamplesDivergedWarning, SampleStats, divergence_reasons, warn_if_diverged

N = 64  # images per set: small, so the file runs in seconds
RES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


@pytest.fixture(scope="module")
def toy(toy_lmdb_of):
    return toy_lmdb_of(3 * N, 32, seed=3)


@pytest.fixture(scope="module")
def images(toy):
    """3N toy images at 16x16: the first 2N are the data (reference + floor), the rest are held out."""
    return load_data_images(toy, (RES, RES), 3 * N)


# --------------------------------------------------------------------------- parts
def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = laplacian_pyramid(x, min_size=8)
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(32, 32), (16, 16), (8, 8)]
    torch.testing.assert_close(collapse_pyramid(levels), x, rtol=0, atol=1e-12)


def test_sliced_wasserstein_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 5, generator=g, dtype=torch.float64)
    assert sliced_wasserstein([a], a, directions=32, repeats=2)[0] == 0
    # A shift by c along a unit vector moves each projection by c·|d·e|; E|d·e| for a random
    # direction in 5-D is Γ(5/2)/(√π Γ(3)) = 3/8.
    e = torch.zeros(5, dtype=torch.float64)
    e[0] = 1
    c = 2.0
    got = sliced_wasserstein([a + c * e], a, directions=512, repeats=4, generator=torch.Generator().manual_seed(1))[0]
    assert got == pytest.approx(c * 3 / 8, rel=0.05)


def test_sample_stats_merge_and_summary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g)
    x[0, 0, 0, 0] = float("nan")
    whole = SampleStats.of(x)
    parts = SampleStats.of(x[:3]).merge(SampleStats.of(x[3:]))
    for key, value in whole.to_dict().items():
        assert parts.to_dict()[key] == pytest.approx(value), key
    finite = x[torch.isfinite(x)]
    assert whole.nonfinite == 1 and whole.outside_1 == int((finite.abs() > 1).sum())
    assert whole.overall_std == pytest.approx(
        float(torch.where(torch.isfinite(x), x, 0).double().std(unbiased=False)), rel=1e-6
    )
    assert SampleStats(**json.loads(json.dumps(whole.to_dict()))).to_dict() == whole.to_dict()


# --------------------------------------------------------------------------- known cases
def _blur(x):
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (torch.outer(k, k) / 16).expand(3, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=3)


def test_data_scores_about_the_floor_and_damage_ranks_worse(images):
    data, held = images[: 2 * N], images[2 * N :]
    good = evaluate(held, data)
    assert good["verdict"] == "good", good["reasons"]
    for name in ("swd_avg", "spectrum_error", "channel_mean_error", "channel_std_error"):
        m = good["metrics"][name]
        assert m["samples"] < 2.5 * m["floor"] + 0.02, (name, m)
    g = torch.Generator().manual_seed(5)
    damaged = {
        "blurred": _blur(held),
        "noisy": held + 0.15 * torch.randn(held.shape, generator=g),
        "saturated": (held * 3).clamp(-1, 1),
        "shifted": held + 0.3,
    }
    for what, x in damaged.items():
        report = evaluate(x, data)
        worse = [
            name
            for name in ("swd_avg", "spectrum_error", "channel_mean_error", "channel_std_error")
            if report["metrics"][name]["samples"] > good["metrics"][name]["samples"]
        ]
        finest = next(iter(report["metrics"]))  # the SWD of the finest Laplacian level
        assert report["metrics"][finest]["samples"] > 1.5 * good["metrics"][finest]["samples"], what
        assert len(worse) >= 3, (what, worse)
        assert report["verdict"] != "good", (what, report["metrics"])


def test_raw_values_decide_out_of_range_and_divergence(images):
    data, held = images[: 2 * N], images[2 * N :]
    raw = SampleStats.of(held * 4)  # what a diverged sampler produced before the PNGs clamped it
    report = evaluate(held.clamp(-1, 1), data, raw_stats=raw)
    assert report["verdict"] == "diverged"
    assert report["metrics"]["beyond_1_5"]["samples"] > 0.1 and report["metrics"]["beyond_1_5"]["floor"] == 0


def test_guard_fires_on_saturated_samples_and_not_on_data(images, recwarn):
    data_std = float(images.std())
    assert divergence_reasons(SampleStats.of(images), data_std) == []
    assert warn_if_diverged(SampleStats.of(images), data_std, "the data") == []
    assert not [w for w in recwarn if issubclass(w.category, SamplesDivergedWarning)]
    with pytest.warns(SamplesDivergedWarning, match="ckpt-1.pt.*beyond ±1.5"):
        warn_if_diverged(SampleStats.of(images * 20), data_std, "ckpt-1.pt, ddim sampler")
    # std alone: within ±1.5 but three times the data's spread
    wide = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.8 - 1.4
    assert any("standard deviation" in r for r in divergence_reasons(SampleStats.of(wide), 0.2))
    assert "non-finite" in divergence_reasons(SampleStats.of(torch.full((1, 3, 2, 2), math.nan)))[0]
    # A data std that is no number (malformed statistics) must not switch the guard off: the limit is 1.
    signs = torch.randint(0, 2, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0)) * 2.9 - 1.45  # std 1.45
    for unusable in (math.nan, math.inf, 0.0, -1.0):
        reasons = divergence_reasons(SampleStats.of(signs), unusable)
        assert reasons == ["standard deviation 1.45 above 1 (no usable data statistics)"], (unusable, reasons)


# --------------------------------------------------------------------------- the command
def _write_folder(path, x):
    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        save_png(img, path / f"{i:06d}.png")
    return path


def test_eval_command_text_and_json(images, toy, tmp_path, capsys):
    samples = _write_folder(tmp_path / "samples", images[2 * N :])
    out = tmp_path / "report.json"
    assert (
        cli_main(["eval", "--samples", str(samples), "--data", str(toy), "--n", str(N), "--json", str(out), "--check"])
        == 0
    )
    said = capsys.readouterr().out
    assert "SWD average" in said and "data floor" in said and "verdict: good" in said
    report = json.loads(out.read_text())
    assert report["n"] == N and report["verdict"] == "good" and "swd_avg" in report["metrics"]
    # The raw values that `blurdiff sample` records are what the out-of-range numbers use.
    (samples / "stats.json").write_text(json.dumps({"raw": SampleStats.of(images[2 * N :] * 5).to_dict()}))
    assert cli_main(["eval", "--samples", str(samples), "--data", str(toy), "--n", str(N), "--check"]) == 1
    assert "verdict: diverged" in capsys.readouterr().out
    # A stats.json of other images (the folder changed since it was written) is not used.
    (samples / "stats.json").write_text(json.dumps({"raw": SampleStats.of(images[N:] * 5).to_dict()}))
    with pytest.warns(UserWarning, match="stats.json describes .* values per channel, the .* images of .* hold"):
        assert cli_main(["eval", "--samples", str(samples), "--data", str(toy), "--n", str(N), "--check"]) == 0
    assert "verdict: good" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a folder"),
        ("empty", "no images"),
        ("mixed sizes", "different sizes"),
        ("too few samples", "at least 16 samples"),
        ("too little data", "holds"),
    ],
)
def test_eval_bad_input(case, message, images, toy, tmp_path, capsys):
    samples = tmp_path / "samples"
    data = str(toy)
    argv_n = []
    if case == "empty":
        samples.mkdir()
    elif case == "mixed sizes":
        _write_folder(samples, images[:20])
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(samples / "000020.png")
    elif case == "too few samples":
        _write_folder(samples, images[:10])
    elif case == "too little data":
        _write_folder(samples, images[:20])
        argv_n = ["--n", "20"]
        data = str(_write_folder(tmp_path / "small_data", images[:30]))
    assert cli_main(["eval", "--samples", str(samples), "--data", data, *argv_n]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blurdiff eval: error:") and message in err, err


def test_sampler_warnings_point_at_the_callers_line():
    """Through BlurDiffusion.sample, make_sampler and torch's no_grad wrapper, both warnings of a
    sampler (no data statistics; diverged samples) name this file, not a line inside blurdiff."""
    from blurdiff import BlurDiffusion, ProcessConfig

    process = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        process.sample(lambda x, t: torch.full_like(x, 50.0), (2, 3, 8, 8), steps=5, sampler="ancestral")
    kinds = {w.category for w in caught}
    assert kinds == {UserWarning, SamplesDivergedWarning}
    assert {w.filename for w in caught} == {__file__}
