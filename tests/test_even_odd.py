"""The kernels' half-size products for bases whose vectors are even or odd about the centre
(csrc/even_odd.h): the structure is found for the project's bases and only for them, and the
halved products equal the dense ones and the reference in every op, dtype and shape."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff.bases import make_basis
from blurdiff.checkpoint import build_from_checkpoint, load_checkpoint
from blurdiff_ops.testing import basis_layout, dense_products

pytestmark = pytest.mark.skipif(
    not blurdiff_ops.kernels_available("cpu"), reason="needs the compiled kernels (the reference has no halves)"
)

SIZES = [(64, 64), (65, 65), (31, 16), (48, 80), (1, 5), (2, 3)]
# float32 against a float64 oracle (relative to the largest value), and float64 halved against
# float64 dense: the bases' own asymmetry (<= 3e-12 at these sizes) bounds the difference.
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def _table(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rel(got, want):
    want = want.double()
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


def _orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def _problem(H, W, K, dtype, basis="gaussian", B=2, C=3, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = make_basis(basis, H, W)
    table = _table(dtype)
    xs = [torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype) for _ in range(K)]
    coefs = torch.randn(K, T, H, W, generator=g, dtype=torch.float64).to(table)
    noise_coef = torch.rand(T, H, W, generator=g, dtype=torch.float64).to(table)
    noise = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randint(0, T, (B,), generator=g)
    return xs, coefs, t, b.U_h.to(table), b.U_w.to(table), noise_coef, noise


@pytest.mark.parametrize("basis", ["gaussian", "dct"])
@pytest.mark.parametrize("n", [1, 2, 16, 31, 64, 65, 80, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_projects_bases_are_found_even_odd(basis, n, dtype):
    U = make_basis(basis, n, n).U_h.to(dtype)
    want = "identity" if n == 1 else "even_odd"  # a 1 x 1 orthonormal basis is [1]
    assert basis_layout(U) == want


def test_identity_random_and_almost_structured_bases_are_not_halved():
    assert basis_layout(torch.eye(64, dtype=torch.float64)) == "identity"
    assert basis_layout(_orthogonal(64, 0)) == "dense"
    assert basis_layout(_orthogonal(64, 0).float()) == "dense"
    # A rotation of one even and one odd column by a small angle keeps U orthogonal but breaks
    # the symmetry: above each dtype's tolerance it must take the dense product.
    for dtype, angle in ((torch.float64, 1e-8), (torch.float32, 1e-5)):
        U = make_basis("gaussian", 64, 64).U_h.clone()
        c, s = torch.cos(torch.tensor(angle, dtype=torch.float64)), torch.sin(torch.tensor(angle, dtype=torch.float64))
        U[:, [0, 1]] = torch.stack([c * U[:, 0] - s * U[:, 1], s * U[:, 0] + c * U[:, 1]], dim=1)
        assert basis_layout(U.to(dtype)) == "dense", dtype
        with dense_products():
            assert basis_layout(make_basis("gaussian", 64, 64).U_h) == "dense"


def _all_ops(xs, coefs, t, U_h, U_w, noise_coef, noise, generator_seed=7):
    """Every op of the library on one problem, with drawn noise from a seeded generator."""
    x = xs[0]
    grad_outputs = torch.ops.blurdiff_ops.spectral_lincomb_backward(x, coefs, t, U_h, U_w, noise_coef)
    return {
        "to_spectral": blurdiff_ops.to_spectral(x, U_h, U_w),
        "from_spectral": blurdiff_ops.from_spectral(x, U_h, U_w),
        "lincomb": blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w),
        "lincomb_noise": blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, noise_coef, noise),
        "lincomb_drawn": blurdiff_ops.spectral_lincomb(
            xs, coefs, t, U_h, U_w, noise_coef, generator=torch.Generator().manual_seed(generator_seed)
        ),
        **{f"backward_{k}": g for k, g in enumerate(grad_outputs)},
    }


def _reference_ops(xs, coefs, t, U_h, U_w, noise_coef, noise):
    d = lambda v: v.double()  # noqa: E731
    x, Uh, Uw = d(xs[0]), d(U_h), d(U_w)
    spec = R.to_spectral(x, Uh, Uw)
    want = {
        "to_spectral": spec,
        "from_spectral": R.from_spectral(x, Uh, Uw),
        "lincomb": R.spectral_lincomb([d(v) for v in xs], d(coefs), t, Uh, Uw),
        "lincomb_noise": R.spectral_lincomb([d(v) for v in xs], d(coefs), t, Uh, Uw, d(noise_coef), d(noise)),
    }
    for k in range(coefs.shape[0]):
        want[f"backward_{k}"] = R.from_spectral(d(coefs)[k, t].unsqueeze(1) * spec, Uh, Uw)
    want[f"backward_{coefs.shape[0]}"] = R.from_spectral(d(noise_coef)[t].unsqueeze(1) * spec, Uh, Uw)
    return want


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("basis", ["gaussian", "dct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_halved_ops_match_dense_and_reference(hw, basis, dtype):
    H, W = hw
    problem = _problem(H, W, 3, dtype, basis)
    if min(H, W) > 1:
        assert basis_layout(problem[3]) == basis_layout(problem[4]) == "even_odd"
    halved = _all_ops(*problem)
    with dense_products():
        dense = _all_ops(*problem)
    reference = _reference_ops(*problem)
    for name, got in halved.items():
        assert _rel(got, dense[name]) <= TOL[dtype], name
        if name in reference:
            assert _rel(got, reference[name]) <= TOL[dtype], name
    # The drawn noise is keyed by frequency, so it is the same draw whichever way U is applied.
    assert _rel(halved["lincomb_drawn"], dense["lincomb_drawn"]) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_on_the_halved_path(dtype):
    problem = _problem(48, 80, 2, dtype)
    halved = _all_ops(*problem)
    with dense_products():
        dense = _all_ops(*problem)
    for name, got in halved.items():
        assert got.dtype == dtype
        assert _rel(got, dense[name]) <= (4e-3 if dtype == torch.float16 else 3e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_column_order_and_mixed_sides(dtype):
    """Columns in any order (not alternating even/odd), and one side dense or the identity beside
    an even/odd one: every combination the kernels choose per side."""
    H, W = 33, 24
    perm = torch.randperm(H, generator=torch.Generator().manual_seed(3))
    sides = {
        "shuffled": make_basis("gaussian", H, H).U_h[:, perm],
        "even_odd": make_basis("dct", W, W).U_w,
        "dense_h": _orthogonal(H, 1),
        "dense_w": _orthogonal(W, 2),
        "identity_h": torch.eye(H, dtype=torch.float64),
        "identity_w": torch.eye(W, dtype=torch.float64),
    }
    assert basis_layout(sides["shuffled"]) == "even_odd"
    table = _table(dtype)
    for h, w in (
        ("shuffled", "even_odd"),
        ("shuffled", "dense_w"),
        ("dense_h", "even_odd"),
        ("identity_h", "even_odd"),
        ("shuffled", "identity_w"),
    ):
        xs, coefs, t, _, _, noise_coef, noise = _problem(H, W, 2, dtype)
        U_h, U_w = sides[h].to(table), sides[w].to(table)
        got = _all_ops(xs, coefs, t, U_h, U_w, noise_coef, noise)
        want = _reference_ops(xs, coefs, t, U_h, U_w, noise_coef, noise)
        with dense_products():
            dense = _all_ops(xs, coefs, t, U_h, U_w, noise_coef, noise)
        for name, value in got.items():
            assert _rel(value, dense[name]) <= TOL[dtype], (h, w, name)
            if name in want:
                assert _rel(value, want[name]) <= TOL[dtype], (h, w, name)


@pytest.mark.parametrize("hw", [(5, 4), (3, 7)], ids=str)
def test_gradcheck_on_the_halved_path(hw):
    xs, coefs, t, U_h, U_w, noise_coef, noise = _problem(*hw, 2, torch.float64, B=2, C=1)
    assert basis_layout(U_h) == basis_layout(U_w) == "even_odd"
    xs = [x.requires_grad_() for x in xs]
    noise.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, z: blurdiff_ops.spectral_lincomb([a, b], coefs, t, U_h, U_w, noise_coef, z), (*xs, noise)
    )
    assert torch.autograd.gradcheck(lambda a: blurdiff_ops.to_spectral(a, U_h, U_w), (xs[0],))
    assert torch.autograd.gradcheck(lambda a: blurdiff_ops.from_spectral(a, U_h, U_w), (xs[0],))


def test_strided_and_expanded_inputs_on_the_halved_path():
    xs, coefs, t, U_h, U_w, noise_coef, noise = _problem(64, 64, 2, torch.float32, B=4)
    views = [xs[0][::2], xs[1][1::2].transpose(2, 3).contiguous().transpose(2, 3)]
    expanded = xs[0][:1].expand(2, -1, -1, -1)
    coefs_view = torch.stack([coefs, coefs], dim=1)[:, 0]  # equal to coefs, not contiguous
    got = blurdiff_ops.spectral_lincomb(views, coefs_view, t[:2], U_h, U_w)
    want = R.spectral_lincomb([v.double() for v in views], coefs.double(), t[:2], U_h.double(), U_w.double())
    assert _rel(got, want) <= TOL[torch.float32]
    assert (
        _rel(blurdiff_ops.to_spectral(expanded, U_h, U_w), R.to_spectral(expanded.double(), U_h.double(), U_w.double()))
        <= 2e-5
    )


def test_a_basis_changed_in_place_is_found_again():
    """The structure is remembered per tensor and version: an in-place write to U must not leave
    the kernels on the halves of the old values."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    U = make_basis("gaussian", 32, 32).U_h.clone()
    assert basis_layout(U) == "even_odd"
    blurdiff_ops.to_spectral(x, U, U)
    U.copy_(_orthogonal(32, 5))
    assert basis_layout(U) == "dense"
    assert _rel(blurdiff_ops.to_spectral(x, U, U), R.to_spectral(x, U, U)) <= 1e-12


def test_a_checkpoint_from_before_the_halves_samples_the_same_images():
    """tests/golden/before_even_odd: written and sampled by the dense kernels (golden/README.md)."""
    folder = Path(__file__).resolve().parent / "golden" / "before_even_odd"
    process, net = build_from_checkpoint(load_checkpoint(folder / "checkpoint.pt"))
    assert basis_layout(process.tables("cpu")["U_h"]) == "even_odd"
    want = np.load(folder / "samples.npz")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checkpoint has no data statistics: the samplers say so
        # The deterministic sampler pins what the checkpoint holds (network, process tables, prior).
        # The stochastic kinds' samples in samples.npz depend on the machine's noise draws: they
        # reproduce on an AMD EPYC (Zen 5) and not on an Intel Xeon (Emerald Rapids), whose draws
        # are other normals (the cause is not found yet; docs/design.md §2's noise law holds on both).
        got = process.sample(
            net, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), sampler="ddim", steps=8, guard=False
        )
        assert np.abs(got.numpy() - want["ddim"]).max() <= 1e-4
