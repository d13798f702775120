"""BlurDiffusion's arguments: every numeric one checked (NaN passes naive range checks), meta
tensors accepted, and tables that would not fit in memory refused before they are allocated."""

import os
import time

import pytest
import torch

from blurdiff import BlurDiffusion, ProcessConfig
from blurdiff.samplers import SAMPLERS, Sampler

BAD_ARGUMENTS = [
    ("f_max", float("nan")),
    ("f_max", float("inf")),
    ("f_max", -0.1),
    ("f_max", "0.1"),
    ("f_max", 1e300),  # every sample NaN
    ("f_max", 1001.0),
    ("sigma", float("nan")),
    ("sigma", float("inf")),
    ("sigma", 0.0),
    ("sigma", -1.0),
    ("sigma", 1e300),  # σ² overflows
    ("sigma", 1e-300),  # σ² underflows: a NaN kernel, which eigh cannot take
    ("sigma", 1e7),
    ("eig_floor", float("nan")),
    ("eig_floor", 0.0),
    ("eig_floor", -0.1),
    ("eig_floor", 1.5),
    ("num_timesteps", 0),
    ("num_timesteps", 2.5),
    ("num_timesteps", float("nan")),
    ("num_timesteps", True),
    ("num_timesteps", "10"),
    ("resolution", 0),
    ("resolution", (8, 0)),
    ("resolution", 8.5),
    ("resolution", (8.5, 8)),
    ("resolution", float("nan")),
    ("resolution", (8, 8, 8)),
    ("resolution", "8"),
    ("resolution", True),
]


@pytest.mark.parametrize("name,value", BAD_ARGUMENTS, ids=lambda v: repr(v))
def test_bad_numbers_are_rejected_by_name(name, value):
    kwargs = dict(resolution=8, num_timesteps=10)
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"^{name} must"):
        BlurDiffusion(ProcessConfig(**kwargs), backend="reference")


@pytest.mark.parametrize("basis", ["gaussian", "dct", "identity"])
@pytest.mark.parametrize("sigma", [1e300, 1e-300])
def test_sigma_out_of_range_names_the_range_for_every_basis(basis, sigma):
    with pytest.raises(ValueError, match=r"^sigma must lie in \[1e-06, 1e\+06\], got"):
        BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=10, basis=basis, sigma=sigma))


@pytest.mark.parametrize("basis", ["gaussian", "dct"])
@pytest.mark.parametrize("sigma", [1e-6, 1e6])
@pytest.mark.parametrize("f_max", [0.0, 1000.0])
def test_the_ends_of_the_ranges_give_finite_tables_for_every_sampler(basis, sigma, f_max):
    p = BlurDiffusion(
        ProcessConfig(resolution=8, num_timesteps=20, basis=basis, sigma=sigma, f_max=f_max, blur_schedule="log")
    )
    for kind in SAMPLERS:
        tables = Sampler(p, None if kind == "ddpm" else 5, kind, reference_var=torch.ones(8, 8)).tables64
        assert all(torch.isfinite(t).all() for t in tables.values() if t is not None), kind


def test_good_numbers_of_other_types_are_accepted():
    import numpy as np

    p = BlurDiffusion(
        ProcessConfig(
            resolution=[np.int64(8), 6], num_timesteps=np.int64(10), f_max=np.float32(0.1), sigma=1, eig_floor=1
        ),
        backend="reference",
    )
    assert p.resolution == (8, 6) and p.num_timesteps == 10


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_meta_tensors_give_meta_results(backend):
    p = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=10), backend=backend)
    x = torch.empty(3, 2, 8, 8, device="meta")
    t = torch.empty(3, dtype=torch.int64, device="meta")
    for out in (p.q_sample(x, t), p.q_sample(x, t, noise=x), p.reverse_step(x, x, t), p.predict_x0(x, x, t)):
        assert out.is_meta and out.shape == x.shape
    # A t with values indexes meta images too; a meta t cannot index real ones.
    assert p.q_sample(x, torch.tensor([1, 5, 10])).is_meta
    with pytest.raises(ValueError, match="t is on the meta device"):
        p.q_sample(torch.zeros(3, 2, 8, 8), t)


def test_tables_too_large_for_memory_are_refused_before_allocation():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs about \d+\.\d GiB .* more than this machine's"):
        BlurDiffusion(ProcessConfig(resolution=4096), backend="reference")  # the checkpoint: ~134 GB a table
    assert time.perf_counter() - start < 5  # refused up front, not after building a basis


def test_the_memory_limit_is_the_machines(monkeypatch):
    page = os.sysconf("SC_PAGE_SIZE")
    real = os.sysconf

    def small(name):  # a machine with 64 MiB
        return 64 * 2**20 // page if name == "SC_PHYS_PAGES" else real(name)

    monkeypatch.setattr(os, "sysconf", small)
    BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=100), backend="reference")  # 17 x 8 x 101 x 64 B: 0.9 MB
    with pytest.raises(ValueError, match=r"resolution 64x64 with 1000 steps needs about 0\.5 GiB .* 0\.1 GiB"):
        BlurDiffusion(ProcessConfig(resolution=64), backend="reference")  # 17 x 8 x 1001 x 4096 B: 0.52 GiB


@pytest.mark.parametrize("steps", [2.5, "5", [10, 2.5], object()])
def test_sampling_steps_that_are_not_steps_are_named(steps):
    p = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=10), backend="reference")
    with pytest.raises(ValueError, match="steps"):
        p.sample(lambda x, t: torch.zeros_like(x), (1, 3, 8, 8), steps=steps, sampler="ddim")


def test_an_empty_training_batch_is_refused_not_a_nan_loss():
    p = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=10), backend="reference")
    with pytest.raises(ValueError, match="training_loss needs a batch of at least one image"):
        p.training_loss(lambda x, t: torch.zeros_like(x), torch.zeros(0, 3, 8, 8))
