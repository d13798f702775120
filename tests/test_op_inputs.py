"""What the ops accept: any view of every tensor argument, and exactly what the reference accepts.

Kernels read raw data pointers, so a strided, expanded (stride 0), offset or transposed argument
must give the same result as its contiguous copy and as the reference, for every argument of
every op. The public ops and ``blurdiff_ops.reference`` must reject the same bad inputs with the
same error. ``CASES``, ``LAYOUTS`` and ``check_views`` live in tests/helpers.py (tests/test_cuda_emulation.py
uses them for the CUDA host code).
"""

import re

import numpy as np
import pytest
import torch
from helpers import CASES, B, C, H, T, W, check_views, op_problem

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff import BlurDiffusion, ProcessConfig

HAS_KERNELS = blurdiff_ops.kernels_available("cpu")
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="blurdiff_ops._C is not built")
HAS_CUDA = torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels")]
    ),
]


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_argument_in_every_layout(device, case):
    check_views(torch.ops.blurdiff_ops, case, device)


@needs_kernels
def test_q_sample_with_a_strided_or_expanded_t():
    """The issue's reports: a strided t gave other values than its contiguous copy, and an
    expanded t (stride 0, one element of storage) read past its storage and crashed."""
    p = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=20), backend="fused")
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 8, 8, generator=g)
    t = torch.tensor([[1, 2], [5, 6], [19, 20]])[:, 0]
    assert torch.equal(p.q_sample(x, t, noise), p.q_sample(x, t.contiguous(), noise))
    t = torch.tensor([7]).expand(64)
    x, noise = torch.randn(64, 2, 8, 8, generator=g), torch.randn(64, 2, 8, 8, generator=g)
    got = p.q_sample(x, t, noise)
    assert torch.equal(got, p.q_sample(x, t.contiguous(), noise))
    ref = BlurDiffusion(ProcessConfig(resolution=8, num_timesteps=20), backend="reference").q_sample(x, t, noise)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The same inputs rejected, the same way, by the public ops (kernels or fallback) and the reference.


def _good():
    a = op_problem(dtype=torch.float32)
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
    a = op_problem(dtype=torch.float32)
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


FAKE_BAD = {
    "coefs K": (dict(coefs=lambda c: c[:1]), "coefs must have shape \\[K=2"),
    "t length": (dict(t=lambda t: t[:1]), "t must have shape \\[B="),
    "U_w size": (dict(U_w=lambda U: U[:-1, :-1]), "U_w must have shape"),
    "noise_coef dtype": (dict(noise_coef=lambda n: n.double()), "noise_coef must have dtype"),
    "noise shape": (dict(noise=lambda n: n[:, :1]), "noise must have the inputs' shape"),
}


@needs_kernels
@pytest.mark.parametrize("case", list(FAKE_BAD))
def test_fake_kernels_reject_with_the_eager_messages(case):
    """torch.compile traces the ops' fake kernels: a wrong call fails there, with the message an
    eager call gives (the same checks, blurdiff_ops/_checks.py)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    change, msg = FAKE_BAD[case]
    args = _apply(_good(), change)
    want = _error(R.spectral_lincomb, **args)
    with FakeTensorMode() as mode:
        fake = {k: [mode.from_tensor(x) for x in v] if k == "inputs" else mode.from_tensor(v) for k, v in args.items()}
        got = _error(torch.ops.blurdiff_ops.spectral_lincomb, **fake)
        if case == "U_w size":
            grad = _error(
                torch.ops.blurdiff_ops.spectral_lincomb_backward,
                fake["inputs"][0],
                fake["coefs"],
                fake["t"],
                fake["U_h"],
                fake["U_w"],
                fake["noise_coef"],
            )
            assert type(grad) is ValueError
            assert str(grad).startswith("blurdiff_ops.spectral_lincomb_backward: U_w must have shape"), str(grad)
    assert type(got) is ValueError and str(got) == str(want)
    assert re.search(msg, str(got)), str(got)


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
