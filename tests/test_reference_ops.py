"""The plain-PyTorch reference ops: the definition, the noise law, and the argument checks."""

import pytest
import torch

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff.bases import make_basis


def _basis(H, W, name="gaussian", dtype=torch.float64):
    b = make_basis(name, H, W)
    return b.U_h.to(dtype), b.U_w.to(dtype)


def test_transforms_are_inverse_and_match_the_definition():
    U_h, U_w = _basis(6, 10)
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    xb = R.to_spectral(x, U_h, U_w)
    torch.testing.assert_close(xb[1, 2], U_h.T @ x[1, 2] @ U_w)
    torch.testing.assert_close(R.from_spectral(xb, U_h, U_w), x)
    # Any leading dims.
    torch.testing.assert_close(R.to_spectral(x[0, 0], U_h, U_w), xb[0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lincomb_matches_its_definition_per_plane(dtype):
    H, W, B, C, K, T = 5, 7, 3, 2, 3, 4
    U_h, U_w = _basis(H, W, dtype=dtype)
    xs = [torch.randn(B, C, H, W, dtype=dtype) for _ in range(K)]
    coefs = torch.randn(K, T, H, W, dtype=dtype)
    noise_coef = torch.randn(T, H, W, dtype=dtype)
    noise = torch.randn(B, C, H, W, dtype=dtype)
    t = torch.tensor([3, 0, 2])
    out = R.spectral_lincomb(xs, coefs, t, U_h, U_w, noise_coef, noise)
    for b in range(B):
        for c in range(C):
            acc = sum(coefs[k, t[b]] * (U_h.T @ xs[k][b, c] @ U_w) for k in range(K))
            acc = acc + noise_coef[t[b]] * (U_h.T @ noise[b, c] @ U_w)
            torch.testing.assert_close(out[b, c], U_h @ acc @ U_w.T)


@pytest.mark.parametrize("name", ["gaussian", "dct", "identity"])
def test_drawn_noise_is_standard_normal_in_pixels(name):
    H, W = 8, 12
    U_h, U_w = _basis(H, W, name)
    B = 2000
    zeros = torch.zeros(B, 1, H, W, dtype=torch.float64)
    coefs = torch.zeros(1, 1, H, W, dtype=torch.float64)
    ones = torch.ones(1, H, W, dtype=torch.float64)
    t = torch.zeros(B, dtype=torch.int64)
    out = R.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=torch.Generator().manual_seed(0))
    # 2000 samples per pixel: the standard error of a variance is about sqrt(2/2000) = 3 %.
    var = out.var(dim=0)[0]
    assert (var - 1).abs().max() < 0.15
    assert abs(out.var().item() - 1) < 0.01
    assert out.mean(dim=0).abs().max() < 0.12
    # Pixels are uncorrelated.
    flat = out[:, 0].reshape(B, -1)
    cov = flat.T @ flat / B
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.12
    again = R.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again, rtol=0, atol=0)


def _good(dtype=torch.float32):
    U_h, U_w = _basis(4, 6, dtype=dtype)
    x = torch.randn(2, 3, 4, 6, dtype=dtype)
    return dict(
        inputs=[x, x.clone()],
        coefs=torch.ones(2, 5, 4, 6, dtype=dtype),
        t=torch.tensor([0, 4]),
        U_h=U_h,
        U_w=U_w,
        noise_coef=torch.ones(5, 4, 6, dtype=dtype),
        noise=torch.randn(2, 3, 4, 6, dtype=dtype),
    )


def _bad_cases():
    yield dict(t=torch.tensor([0, 5])), "t must lie in \\[0, 4\\]"
    yield dict(t=torch.tensor([-1, 0])), "t must lie in"
    yield dict(t=torch.tensor([0, 1], dtype=torch.int32)), "t must be int64"
    yield dict(t=torch.tensor([0, 1, 2])), "t must have shape \\[B=2\\]"
    yield dict(inputs=[]), "at least one tensor"
    yield dict(inputs=torch.randn(2, 3, 4, 6)), "inputs must be a list"
    yield dict(inputs=[torch.randn(3, 4, 6), torch.randn(3, 4, 6)]), "inputs\\[0\\] must have 4 dimensions"
    yield dict(inputs=[torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 5)]), "inputs\\[1\\] has shape"
    yield (
        dict(inputs=[torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6, dtype=torch.float64)]),
        "inputs\\[1\\] has dtype",
    )
    yield dict(inputs=[torch.ones(2, 3, 4, 6, dtype=torch.int32)] * 2), "inputs\\[0\\] must be float32"
    yield dict(coefs=torch.ones(3, 5, 4, 6)), "coefs must have shape \\[K=2"
    yield dict(coefs=torch.ones(2, 5, 4, 6, dtype=torch.float64)), "coefs must have dtype torch.float32"
    yield dict(U_h=torch.eye(5)), "U_h must have shape \\(4, 4\\)"
    yield dict(U_w=torch.eye(6, dtype=torch.float64)), "U_w must have dtype"
    yield dict(U_w=torch.eye(6, device="meta")), "U_w is on meta"
    yield dict(noise_coef=torch.ones(4, 4, 6)), "noise_coef must have shape \\[T=5"
    yield dict(noise=torch.randn(2, 3, 4, 5)), "noise must have the inputs' shape"
    yield dict(noise_coef=None), "noise was given but noise_coef is None"
    yield dict(coefs=torch.ones(2, 5, 4, 6, device="meta")), "coefs is on meta"


@pytest.mark.parametrize("fn", [R.spectral_lincomb, blurdiff_ops.spectral_lincomb], ids=["reference", "public"])
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[1][:30] if isinstance(c, tuple) else None)
def test_bad_input_names_the_argument(fn, case):
    change, msg = case
    args = _good()
    args.update(change)
    with pytest.raises(ValueError, match=msg):
        fn(**args)


def test_transform_bad_input():
    U_h, U_w = _basis(4, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        R.to_spectral(torch.randn(6), U_h, U_w)
    with pytest.raises(ValueError, match="U_w must have shape \\(5, 5\\)"):
        R.from_spectral(torch.randn(2, 4, 5), U_h, U_w)
    with pytest.raises(ValueError, match="U_h must have dtype torch.float64"):
        blurdiff_ops.to_spectral(torch.randn(4, 6, dtype=torch.float64), U_h, U_w.double())


def test_generator_on_another_device_is_rejected():
    args = _good()
    args["noise"] = None
    with pytest.raises(ValueError, match="generator is for meta|generator must be"):
        R.spectral_lincomb(**args, generator="not a generator")
