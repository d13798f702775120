"""What the ops accept: any view of every tensor argument, and exactly what the reference accepts.

Kernels read raw data pointers, so a strided, expanded (stride 0), offset or transposed argument
must give the same result as its contiguous copy and as the reference, for every argument of
every op. The public ops and ``blurdiff_ops.reference`` must reject the same bad inputs with the
same error. ``CASES``, ``LAYOUTS`` and ``check_views`` are reused by tests/test_cuda_emulation.py
for the CUDA host code.
"""

import re

import numpy as np
import pytest
import torch

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff import BlurDiffusion, ProcessConfig
from blurdiff.bases import make_basis

HAS_KERNELS = blurdiff_ops.kernels_available("cpu")
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="blurdiff_ops._C is not built")
HAS_CUDA = torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels")]
    ),
]

B, C, H, W, T = 3, 2, 6, 10, 5


def _strided(x, fill):
    # Every other element of a buffer whose other elements are garbage.
    big = torch.full((*x.shape, 2), fill, dtype=x.dtype, device=x.device)
    big[..., 0] = x
    return big[..., 0]


def _offset(x, fill):
    # Contiguous, but 3 garbage elements into its storage.
    flat = torch.full((x.numel() + 3,), fill, dtype=x.dtype, device=x.device)
    flat[3:] = x.reshape(-1)
    return flat[3:].view(x.shape)


def _expanded(x, fill):
    # Stride 0 along dim 0 over a storage of one slice: other values than x, but valid ones.
    return x[:1].clone().expand(x.shape)


def _transposed(x, fill):
    # Column-major in the last two dims (a square matrix read as its transpose is the classic slip).
    return x.mT.contiguous().mT if x.dim() >= 2 else _strided(x, fill)


LAYOUTS = {"strided": _strided, "offset": _offset, "expanded": _expanded, "transposed": _transposed}


def _problem(device="cpu", dtype=torch.float64, channels=C):
    g = torch.Generator().manual_seed(0)
    b = make_basis("gaussian", H, W)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    shape = (B, channels, H, W)
    return dict(
        x0=r(*shape),
        x1=r(*shape),
        coefs=r(2, T, H, W),
        t=torch.tensor([4, 0, 2], device=device),
        U_h=b.U_h.to(device, dtype),
        U_w=b.U_w.to(device, dtype),
        noise_coef=torch.rand(T, H, W, generator=g, dtype=torch.float64).to(device, dtype),
        noise=r(*shape),
    )


def _per_table(grad, coefs, t, U_h, U_w, noise_coef):
    tables = list(coefs) + ([noise_coef] if noise_coef is not None else [])
    return [R.spectral_lincomb([grad], c[None], t, U_h, U_w) for c in tables]


# name -> (the arguments it takes from _problem, call on an op namespace, the reference).
CASES = {
    "to_spectral": (
        ("x0", "U_h", "U_w"),
        lambda ops, a: ops.to_spectral(a["x0"], a["U_h"], a["U_w"]),
        lambda a: R.to_spectral(a["x0"], a["U_h"], a["U_w"]),
    ),
    "from_spectral": (
        ("x0", "U_h", "U_w"),
        lambda ops, a: ops.from_spectral(a["x0"], a["U_h"], a["U_w"]),
        lambda a: R.from_spectral(a["x0"], a["U_h"], a["U_w"]),
    ),
    "lincomb": (
        ("x0", "x1", "coefs", "t", "U_h", "U_w", "noise_coef", "noise"),
        lambda ops, a: ops.spectral_lincomb(
            [a["x0"], a["x1"]], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"], a["noise"]
        ),
        lambda a: R.spectral_lincomb(
            [a["x0"], a["x1"]], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"], a["noise"]
        ),
    ),
    # Drawn noise: the same seed on both calls; no reference (another generator).
    "lincomb_drawn_noise": (
        ("x0", "coefs", "t", "U_h", "U_w", "noise_coef"),
        lambda ops, a: ops.spectral_lincomb(
            [a["x0"]],
            a["coefs"][:1],
            a["t"],
            a["U_h"],
            a["U_w"],
            a["noise_coef"],
            None,
            torch.Generator().manual_seed(4),
        ),
        None,
    ),
    "lincomb_backward": (
        ("x0", "coefs", "t", "U_h", "U_w", "noise_coef"),
        lambda ops, a: ops.spectral_lincomb_backward(a["x0"], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"]),
        lambda a: _per_table(a["x0"], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"]),
    ),
}


def check_views(ops, case, device="cpu", channels=C, layouts=tuple(LAYOUTS)):
    """Each argument of ``case`` in each of ``layouts``, the others contiguous: the op on the view
    equals the op on its contiguous copy, bit for bit, and the reference on the view."""
    names, call, reference = CASES[case]
    base = _problem(device, channels=channels)
    as_list = lambda y: list(y) if isinstance(y, (list, tuple)) else [y]  # noqa: E731
    for name in names:
        # Garbage that is still a valid t keeps a kernel that reads it wrong from crashing.
        fill = T - 1 if name == "t" else float("nan")
        for layout in layouts:
            args = dict(base)
            args[name] = LAYOUTS[layout](base[name], fill)
            assert not args[name].is_contiguous() or args[name].storage_offset() != 0
            got = as_list(call(ops, args))
            dense = as_list(call(ops, {**args, name: args[name].contiguous()}))
            where = f"{case}: {name} {layout}"
            for g, d in zip(got, dense, strict=True):
                assert torch.equal(g, d), where
            if reference is not None:
                for g, r in zip(got, as_list(reference(args)), strict=True):
                    err = (g.cpu() - r.cpu()).abs().max().item()
                    assert err <= 1e-10 * (r.abs().max().item() + 1), f"{where}: {err}"


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_argument_in_every_layout(device, case):
    check_views(torch.ops.blurdiff_ops, case, device)


@needs_kernels
def test_q_sample_with_a_strided_or_expanded_t():
    """The issue's reports: a strided t gave other values than its contiguous copy, and an
    expanded t (stride 0, one element of storage) read past its storage and crashed."""
    p = BlurDiffusion(ProcessConfig(resolution=8, steps=20), backend="fused")
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 8, 8, generator=g)
    t = torch.tensor([[1, 2], [5, 6], [19, 20]])[:, 0]
    assert torch.equal(p.q_sample(x, t, noise), p.q_sample(x, t.contiguous(), noise))
    t = torch.tensor([7]).expand(64)
    x, noise = torch.randn(64, 2, 8, 8, generator=g), torch.randn(64, 2, 8, 8, generator=g)
    got = p.q_sample(x, t, noise)
    assert torch.equal(got, p.q_sample(x, t.contiguous(), noise))
    ref = BlurDiffusion(ProcessConfig(resolution=8, steps=20), backend="reference").q_sample(x, t, noise)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The same inputs rejected, the same way, by the public ops (kernels or fallback) and the reference.


def _good():
    a = _problem(dtype=torch.float32)
    return dict(
        inputs=[a["x0"], a["x1"]],
        coefs=a["coefs"],
        t=a["t"],
        U_h=a["U_h"],
        U_w=a["U_w"],
        noise_coef=a["noise_coef"],
        noise=a["noise"],
    )


def _grad(x):
    return x.clone().requires_grad_()


LINCOMB_BAD = {
    "t list": (dict(t=[4, 0, 2]), "t must be a torch.Tensor, got list"),
    "t ndarray": (dict(t=np.array([4, 0, 2])), "t must be a torch.Tensor, got ndarray"),
    "input ndarray": (dict(inputs=[np.zeros((B, C, H, W), np.float32)] * 2), "inputs\\[0\\] must be a torch.Tensor"),
    "inputs ndarray": (dict(inputs=np.zeros((2, B, C, H, W), np.float32)), "inputs must be a list"),
    "coefs list": (dict(coefs=[[0.0]]), "coefs must be a torch.Tensor, got list"),
    "U_h ndarray": (dict(U_h=np.eye(H, dtype=np.float32)), "U_h must be a torch.Tensor, got ndarray"),
    "noise_coef ndarray": (dict(noise_coef=np.ones((T, H, W), np.float32)), "noise_coef must be a torch.Tensor"),
    "noise sparse": (dict(noise=torch.zeros(B, C, H, W).to_sparse()), "noise must be a dense"),
    "coefs requires grad": (dict(coefs=_grad), "coefs requires grad"),
    "U_h requires grad": (dict(U_h=_grad), "U_h requires grad"),
    "U_w requires grad": (dict(U_w=_grad), "U_w requires grad"),
    "noise_coef requires grad": (dict(noise_coef=_grad), "noise_coef requires grad"),
}


def _apply(args, change):
    for k, v in change.items():
        args[k] = v(args[k]) if callable(v) else v
    return args


def _error(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture(params=["kernels", "fallback"])
def backend(request):
    """The public ops on the compiled kernels, and on the reference they fall back to."""
    from blurdiff_ops.testing import kernels_unavailable

    if request.param == "kernels" and not HAS_KERNELS:
        pytest.skip("blurdiff_ops._C is not built")
    if request.param == "fallback":
        with kernels_unavailable(warned=True):
            yield request.param
    else:
        yield request.param


@pytest.mark.parametrize("case", list(LINCOMB_BAD))
def test_lincomb_rejects_what_the_reference_rejects(backend, case):
    change, msg = LINCOMB_BAD[case]
    public = _error(blurdiff_ops.spectral_lincomb, **_apply(_good(), change))
    reference = _error(R.spectral_lincomb, **_apply(_good(), change))
    assert type(public) is ValueError and type(reference) is ValueError, (public, reference)
    assert str(public) == str(reference)
    assert re.search(msg, str(public)), str(public)


TRANSFORM_BAD = {
    "x ndarray": (dict(x=np.zeros((H, W), np.float32)), "x must be a torch.Tensor, got ndarray"),
    "x list": (dict(x=[[0.0] * W] * H), "x must be a torch.Tensor, got list"),
    "x sparse": (dict(x=torch.zeros(H, W).to_sparse()), "x must be a dense"),
    "U_w ndarray": (dict(U_w=np.eye(W, dtype=np.float32)), "U_w must be a torch.Tensor"),
    "U_h requires grad": (dict(U_h=_grad), "U_h requires grad"),
    "U_w requires grad": (dict(U_w=_grad), "U_w requires grad"),
}


@pytest.mark.parametrize("op", ["to_spectral", "from_spectral"])
@pytest.mark.parametrize("case", list(TRANSFORM_BAD))
def test_transforms_reject_what_the_reference_rejects(backend, op, case):
    change, msg = TRANSFORM_BAD[case]
    a = _problem(dtype=torch.float32)
    args = lambda: _apply(dict(x=a["x0"], U_h=a["U_h"], U_w=a["U_w"]), change)  # noqa: E731
    public = _error(getattr(blurdiff_ops, op), *args().values())
    reference = _error(getattr(R, op), *args().values())
    assert type(public) is ValueError and type(reference) is ValueError, (public, reference)
    assert str(public) == str(reference)
    assert re.search(msg, str(public)), str(public)


def test_tables_that_require_grad_are_constants_without_grad_mode(backend):
    """Under no_grad nothing is recorded, so a table that requires grad (a Parameter, say) is just
    a constant: accepted by both, with the same result."""
    a = _good()
    tables = {k: _grad(a[k]) for k in ("coefs", "U_h", "U_w", "noise_coef")}
    with torch.no_grad():
        got = blurdiff_ops.spectral_lincomb(**{**a, **tables})
        want = R.spectral_lincomb(**{**a, **tables})
        spec = blurdiff_ops.to_spectral(a["noise"], tables["U_h"], tables["U_w"])
    assert not got.requires_grad
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(spec, R.to_spectral(a["noise"], a["U_h"], a["U_w"]))


def test_meta_tensors_give_meta_results(backend):
    """Meta tensors have no values: shapes go through, the range check of t is skipped."""
    a = {k: v.to("meta") for k, v in _good().items() if k != "inputs"}
    xs = [x.to("meta") for x in _good()["inputs"]]
    for fn in (blurdiff_ops.spectral_lincomb, R.spectral_lincomb):
        out = fn(xs, **a)
        assert out.is_meta and out.shape == xs[0].shape
    for fn in (blurdiff_ops.to_spectral, R.to_spectral, blurdiff_ops.from_spectral, R.from_spectral):
        out = fn(xs[0], a["U_h"], a["U_w"])
        assert out.is_meta and out.shape == xs[0].shape
