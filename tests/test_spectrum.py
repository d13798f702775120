"""The weights-free spectral check: radial power spectra, the samples/data report, the plot."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blurdiff.images import load_image_folder
from blurdiff.spectrum import (
    plot_spectra,
    radial_power_spectrum,
    spectrum_report,
)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="circular")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_bins_and_shapes():
    freq, power = radial_power_spectrum(torch.zeros(2, 3, 16, 24))
    assert np.array_equal(freq, np.arange(9))  # 0 .. min(H, W) // 2
    assert power.shape == (9,) and power.dtype == np.float64
    assert np.all(power == 0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        radial_power_spectrum(torch.zeros(2, 2, 3, 16, 16))


def test_white_noise_is_flat_at_its_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g) * 2 - 1  # uniform [-1, 1], variance 1/3
    freq, power = radial_power_spectrum(x)
    assert np.all(np.abs(power[1:] / (1 / 3) - 1) < 0.15), power
    # and a flat line: no trend from low to high frequencies
    slope = np.polyfit(np.log(freq[1:]), np.log(power[1:]), 1)[0]
    assert abs(slope) < 0.05


def test_blurred_images_have_less_high_frequency_power():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    freq, p_sharp = radial_power_spectrum(x)
    _, p_blur = radial_power_spectrum(_gaussian_blur(x, 1.5))
    high = freq > 8
    assert np.all(p_blur[high] < 0.1 * p_sharp[high])
    assert p_blur[1] > 0.5 * p_sharp[1]  # the lowest frequencies mostly survive
    assert np.all(np.diff(p_blur[1:]) < 0)  # Gaussian blur: monotone fall-off


@pytest.mark.parametrize("ky,kx,expected", [(0, 5, 5), (3, 4, 5), (7, 0, 7), (6, 8, 10)])
def test_sinusoid_peaks_in_its_bin(ky, kx, expected):
    n = 32
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    img = 0.8 * torch.cos(2 * math.pi * (ky * yy + kx * xx) / n).to(torch.float64)
    freq, power = radial_power_spectrum(img.expand(2, 3, n, n))
    assert freq[np.argmax(power)] == expected
    others = np.delete(power, expected)
    assert np.all(others < 1e-20 + 1e-12 * power[expected])


def test_non_square_images_use_the_shorter_side():
    h, w = 16, 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # 6 cycles across the 32-wide side = 3 cycles per 16 pixels of the shorter side
    img = torch.cos(2 * math.pi * 6 * xx / w).to(torch.float64)
    freq, power = radial_power_spectrum(img[None, None])
    assert len(freq) == 9 and freq[np.argmax(power)] == 3


def test_report_identical_sets_give_zero_ratio():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    rep = spectrum_report(x, x.clone())
    assert np.all(rep["log10_ratio"] == 0)
    assert rep["high_freq_mean_abs_log10_ratio"] == 0.0
    assert np.array_equal(rep["high_freq_bins"], np.arange(5, 9))
    assert rep["n_samples"] == 8 and rep["n_data"] == 8


def test_report_detects_oversmoothed_samples():
    g = torch.Generator().manual_seed(3)
    data = torch.rand(16, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    samples = _gaussian_blur(data, 1.0)
    rep = spectrum_report(samples, data)
    high = rep["frequencies"] > 8
    assert np.all(rep["log10_ratio"][high] < -0.5)  # samples lack high frequencies
    assert rep["high_freq_mean_abs_log10_ratio"] > 0.5
    # a known ratio: samples = 2 * data gives log10(4) in every bin
    rep2 = spectrum_report(2 * data, data)
    np.testing.assert_allclose(rep2["log10_ratio"], np.log10(4.0), atol=1e-12)
    assert rep2["high_freq_mean_abs_log10_ratio"] == pytest.approx(np.log10(4.0))
    with pytest.raises(ValueError, match="same resolution"):
        spectrum_report(data[..., :16, :16], data)


def test_report_from_folders_matches_tensors(tmp_path):
    rng = np.random.default_rng(4)
    arrays = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "s" / "figures").mkdir(parents=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / "s" / f"{i}.png")
    # A sample run's figures (another size) live in a sub-folder and are not images of the set.
    Image.fromarray(arrays[0]).resize((40, 20)).save(tmp_path / "s" / "figures" / "trajectory.png")
    loaded = load_image_folder(tmp_path / "s")
    assert loaded.shape == (5, 3, 16, 16) and loaded.dtype == torch.float64
    assert loaded.min() >= -1 and loaded.max() <= 1
    tensor = torch.from_numpy(arrays.astype(np.float64) / 127.5 - 1).permute(0, 3, 1, 2)
    rep_folder = spectrum_report(tmp_path / "s", tensor)
    assert np.all(np.abs(rep_folder["log10_ratio"]) < 1e-12)


def test_plot_writes_a_valid_png(tmp_path):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    curves = {
        "data": radial_power_spectrum(x),
        "samples (blurred)": radial_power_spectrum(_gaussian_blur(x.double(), 1.0)),
    }
    path = plot_spectra(curves, tmp_path / "plots" / "spectra.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (720, 480)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # both curves drawn
    assert (0, 0, 0) in colours  # axes and labels
    with pytest.raises(ValueError, match="no curves"):
        plot_spectra({}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="frequencies but"):
        plot_spectra({"bad": (np.arange(3), np.ones(4))}, tmp_path / "bad.png")
