"""An independent float64 NumPy implementation of docs/design.md §1, for tests only.

Written from the formulas, not from blurdiff: its own eigendecomposition (NumPy, ascending
order, NumPy's signs), tables by direct products rather than log-space sums, and the
per-channel algebra spelled out as matrix products.
"""

import math

import numpy as np


def kernel_1d(n, sigma):
    k = np.arange(-(n - 1), n, dtype=np.float64)
    g = np.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def toeplitz(n, sigma):
    g = kernel_1d(n, sigma)
    return np.array([[g[j - i + n - 1] for j in range(n)] for i in range(n)])


def eig_1d(n, sigma, floor=0.03):
    lam, V = np.linalg.eigh(toeplitz(n, sigma))
    return V, np.maximum(lam, floor)


def f_schedule(kind, N, f_max):
    i = np.arange(N + 1, dtype=np.float64)
    if kind == "quartic":
        return f_max * (i / N) ** 4
    if kind == "log":
        return f_max * np.log(i + 1e-6) / math.log(N)
    raise ValueError(kind)


class Process:
    def __init__(self, H, W, kind="quartic", f_max=0.140625, sigma=0.4, N=1000):
        self.Uh, lh = eig_1d(H, sigma)
        self.Uw, lw = eig_1d(W, sigma)
        self.D = np.minimum(np.outer(lh, lw), 1.0)
        self.N = N
        beta = np.concatenate([[0.0], np.linspace(1e-4, 0.02, N)])
        f = f_schedule(kind, N, f_max)
        self.A = np.ones((N + 1, H, W))
        for i in range(1, N + 1):
            self.A[i] = (1 - beta[i]) * self.D ** (2 * f[i])
        self.Abar = np.ones((N + 1, H, W))
        for i in range(1, N + 1):
            self.Abar[i] = self.Abar[i - 1] * self.A[i]

    def spec(self, x):
        return self.Uh.T @ x @ self.Uw

    def pix(self, xb):
        return self.Uh @ xb @ self.Uw.T

    def q_sample(self, x0, t, eps):
        out = np.empty_like(x0)
        for b in range(x0.shape[0]):
            ab = self.Abar[t[b]]
            for c in range(x0.shape[1]):
                out[b, c] = self.pix(np.sqrt(ab) * self.spec(x0[b, c]) + np.sqrt(1 - ab) * self.spec(eps[b, c]))
        return out

    def reverse_step(self, x, eps_pred, t, z):
        out = np.empty_like(x)
        for b in range(x.shape[0]):
            i = t[b]
            A, ab = self.A[i], self.Abar[i]
            for c in range(x.shape[1]):
                xb = (2 - np.sqrt(A)) * self.spec(x[b, c]) - (1 - A) / np.sqrt(1 - ab) * self.spec(eps_pred[b, c])
                if i > 1:
                    xb = xb + np.sqrt(1 - A) * self.spec(z[b, c])
                out[b, c] = self.pix(xb)
        return out


# ---------------------------------------------------------------- the other families (blurdiff.families)
# Written from the papers' formulas with scalar math per step, amplitudes (not logs) where they do
# not underflow, and the DCT frequencies as ω_i² + ω_j² with ω = π i / n.


def hoogeboom(H, W, N, blur_sigma_max, d_min):
    """(a, s) [N+1, H, W] of Blurring Diffusion Models: a = α_t d_t(k), s = σ_t; row 0 the data."""
    a = np.ones((N + 1, H, W))
    s = np.zeros((N + 1, H, W))
    wh, ww = math.pi * np.arange(H) / H, math.pi * np.arange(W) / W
    lam = wh[:, None] ** 2 + ww[None, :] ** 2
    lo = math.atan(math.exp(-0.5 * 10))  # log-SNR 10 at t = 0
    hi = math.atan(math.exp(-0.5 * -10))  # -10 at t = 1
    for i in range(1, N + 1):
        t = i / N
        logsnr = -2 * math.log(math.tan(lo + (hi - lo) * t))
        alpha = math.sqrt(1 / (1 + math.exp(-logsnr)))
        sigma = math.sqrt(1 / (1 + math.exp(logsnr)))
        blur = blur_sigma_max * math.sin(t * math.pi / 2) ** 2
        d = (1 - d_min) * np.exp(-lam * blur * blur / 2) + d_min
        a[i] = alpha * d
        s[i] = sigma
    return a, s


def rissanen(H, W, N, blur_sigma_min, blur_sigma_max, noise_sigma):
    """(log a, s) [N+1, H, W] of Generative Modelling With Inverse Heat Dissipation (log a: the
    amplitude underflows at the finest frequencies)."""
    log_a = np.zeros((N + 1, H, W))
    s = np.zeros((N + 1, H, W))
    wh, ww = math.pi * np.arange(H) / H, math.pi * np.arange(W) / W
    sigmas = np.geomspace(blur_sigma_min, blur_sigma_max, N)
    for k in range(1, N + 1):
        t = sigmas[k - 1] ** 2 / 2
        log_a[k] = -t * np.add.outer(wh**2, ww**2)
        s[k] = noise_sigma
    return log_a, s


def dct_basis(n):
    """Orthonormal DCT-II as columns (U with to_spectral = U^T x U): U[m, k] = s_k cos(π (m + ½) k / n)."""
    U = np.empty((n, n))
    for k in range(n):
        scale = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        for m in range(n):
            U[m, k] = scale * math.cos(math.pi * (m + 0.5) * k / n)
    return U
