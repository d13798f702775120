"""The bases: orthogonality, and the eigenbasis blur equals the direct Toeplitz blur (RGB)."""

import math

import pytest
import torch

import blurdiff_ops.reference as R
from blurdiff.bases import dct_matrix, gaussian_eigenbasis_1d, make_basis, toeplitz_blur_matrix


@pytest.mark.parametrize("name", ["gaussian", "dct", "identity"])
@pytest.mark.parametrize("hw", [(16, 16), (8, 20), (1, 5)])
def test_bases_are_orthogonal(name, hw):
    b = make_basis(name, *hw)
    for U in (b.U_h, b.U_w):
        n = U.shape[0]
        torch.testing.assert_close(U.T @ U, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(U @ U.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert b.D.shape == hw and (b.D > 0).all() and (b.D <= 1).all()


@pytest.mark.parametrize("sigma", [0.4, 0.7])
@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_rgb_spectral_blur_equals_direct_toeplitz_blur(sigma, hw):
    H, W = hw
    b = make_basis("gaussian", H, W, sigma=sigma)
    for n in hw:  # the check holds only when no eigenvalue was floored
        assert gaussian_eigenbasis_1d(n, sigma, 0.0)[1].min() > 0.03
    # Distinct channels, so a layout that pairs an eigenvalue with another frequency fails.
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    x[:, 1] = torch.linspace(-1, 1, W, dtype=torch.float64)
    blurred = R.spectral_lincomb([x], b.D[None, None], torch.zeros(2, dtype=torch.int64), b.U_h, b.U_w)
    direct = toeplitz_blur_matrix(H, sigma) @ x @ toeplitz_blur_matrix(W, sigma).T
    torch.testing.assert_close(blurred, direct, rtol=0, atol=1e-12)
    # And by direct 2-D convolution with zero padding, not through any matrix.
    k = torch.outer(*(torch.exp(-(torch.arange(-(n - 1), n, dtype=torch.float64) ** 2) / (2 * sigma**2)) for n in hw))
    k = k / k.sum()
    conv = torch.nn.functional.conv2d(x.reshape(-1, 1, H, W), k[None, None], padding=(H - 1, W - 1))
    torch.testing.assert_close(blurred, conv.reshape(2, 3, H, W), rtol=0, atol=1e-12)


def test_dct_basis_is_dct_ii():
    n = 8
    C = dct_matrix(n)
    x = torch.randn(n, dtype=torch.float64)
    direct = torch.tensor(
        [sum(x[m] * math.cos(math.pi * (m + 0.5) * k / n) for m in range(n)) for k in range(n)], dtype=torch.float64
    )
    direct *= torch.tensor([math.sqrt(1 / n)] + [math.sqrt(2 / n)] * (n - 1), dtype=torch.float64)
    torch.testing.assert_close(C @ x, direct)
    b = make_basis("dct", 6, 10, sigma=0.5)
    torch.testing.assert_close(
        b.D[2, 3],
        torch.tensor(math.exp(-0.125 * ((math.pi * 2 / 6) ** 2 + (math.pi * 3 / 10) ** 2)), dtype=torch.float64),
    )


def test_eigenvalues_are_sorted_coarse_first_and_floored():
    b = make_basis("gaussian", 16, 16, sigma=3.0)
    assert b.D[0, 0] == b.D.max()
    assert (b.D.diagonal().diff() <= 0).all()
    _, lam = gaussian_eigenbasis_1d(16, 3.0, 0.03)
    assert lam.min() == pytest.approx(0.03)  # a wide blur has eigenvalues below the floor
