"""The exact yardstick of sampler error: Gaussian data diagonal in the basis, no network, no Monte Carlo.

With data ``x̄_0 ~ N(0, diag(v))`` and the exact (linear) score, a sampler's output is Gaussian and
diagonal in the basis: :func:`output_variance` computes its variance from the sampler's own tables,
:func:`gaussian_distance` compares it with ``v`` (docs/sampling.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blurdiff.samplers import Sampler

__all__ = ["BANDS", "exact_score", "gaussian_distance", "output_variance", "power_law_spectrum", "reference_estimate"]

BANDS = 4  # radial frequency bands, equal widths of the normalised index radius


def power_law_spectrum(resolution, pixel_variance: float = 0.25) -> torch.Tensor:
    """A natural-image-like power per frequency, ``v ∝ 1/(1 + |k|²)`` with ``k`` the frequency
    index (of the basis, ordered from coarse to fine), scaled so that the mean power (the pixel
    variance, by Parseval) is ``pixel_variance`` (0.25: images in [-1, 1] with std 0.5)."""
    H, W = resolution
    k2 = torch.arange(H, dtype=torch.float64)[:, None] ** 2 + torch.arange(W, dtype=torch.float64)[None, :] ** 2
    v = 1 / (1 + k2)
    return v * (pixel_variance / v.mean())


def reference_estimate(v: torch.Tensor, images: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """What a trainer measures of ``v`` from ``images`` images: each frequency's power is a mean
    of ``images·channels`` squares of Gaussians, ``v · χ²(n)/n`` (seeded)."""
    n = images * channels
    g = torch.Generator().manual_seed(seed)
    chi2 = torch.distributions.Chi2(torch.tensor(float(n), dtype=torch.float64))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    return v * chi2.sample(v.shape) / n


def exact_score(process, v: torch.Tensor):
    """The optimal ε-predictor of Gaussian data of power ``v`` as a model ``(x, t) -> ε̄*``
    (one ``spectral_lincomb``), to drive samplers in tests."""
    coef = process.reference_eps_coef(v)[None].float().contiguous()

    def model(x, t):
        return process.lincomb([x], t, coef.to(x.device))

    return model


def output_variance(sampler, v: torch.Tensor) -> torch.Tensor:
    """The exact variance per frequency of what ``sampler`` produces from Gaussian data of power
    ``v`` with the exact score (float64 ``[H, W]``). A step is ``x̄_j = c_0 x̄_i + c_1 ε̄*_i
    (+ c_2 ε̄*_prev + c_3 x̄_prev) + τ z̄`` with ``ε̄* = e x̄``: the 2×2 covariance of (x̄_i, x̄_prev)
    is propagated exactly from the sampler's prior (``BlurDiffusion.prior_std``)."""
    p = sampler.process
    tab = sampler.tables64
    c, tau = tab["step_coefs"], tab["step_noise"]
    asc = (0,) + tuple(reversed(sampler.timesteps))
    e = p.reference_eps_coef(v)  # ε̄* = e[t] x̄_t
    var = p.prior_std(sampler.reference_var) ** 2  # Var(x̄_i): the prior the sampler starts from
    var_prev = cov = torch.zeros_like(var)  # Var(x̄_prev), Cov(x̄_i, x̄_prev)
    for k in range(sampler.K, 0, -1):
        i = asc[k]
        a = c[0, k] + c[1, k] * e[i]
        b = c[2, k] * e[asc[k + 1]] + c[3, k] if (c.shape[0] == 4 and k < sampler.K) else torch.zeros_like(a)
        noise = tau[k] ** 2 if tau is not None else 0.0
        new_var = a * a * var + 2 * a * b * cov + b * b * var_prev + noise
        new_cov = a * var + b * cov
        var, var_prev, cov = new_var, var, new_cov
    return var


def _bands(resolution) -> torch.Tensor:
    H, W = resolution
    i, j = torch.arange(H, dtype=torch.float64)[:, None] / H, torch.arange(W, dtype=torch.float64)[None, :] / W
    r = torch.sqrt(i**2 + j**2) / 2**0.5
    return (r * BANDS).clamp(max=BANDS - 1).long()


def gaussian_distance(var: torch.Tensor, v: torch.Tensor) -> dict[str, object]:
    """2-Wasserstein distance and KL divergence between ``N(0, diag(var))`` (a sampler's output)
    and ``N(0, diag(v))`` (the data), one channel of one image: totals and per radial band
    (``bands[b]``: frequencies of normalised index radius in ``[b/4, (b+1)/4)``)."""
    w2_sq = (var.sqrt() - v.sqrt()) ** 2
    ratio = var / v
    kl = 0.5 * (ratio - 1 - torch.log(ratio))

    def summary(m) -> dict[str, float]:
        values = (w2_sq[m].sum().sqrt(), kl[m].sum(), ratio[m].min(), ratio[m].max())
        return dict(zip(("w2", "kl", "var_ratio_min", "var_ratio_max"), map(float, values)))

    band = _bands(tuple(v.shape))
    total = summary(...)  # every frequency; the bands go between the sums and the ratios
    return {"w2": total.pop("w2"), "kl": total.pop("kl"), "bands": [summary(band == b) for b in range(BANDS)], **total}


def evaluate_samplers(
    process, v: torch.Tensor, samplers: Sequence[str], counts: Sequence[int], reference: torch.Tensor | None = None
) -> list[dict[str, object]]:
    """:func:`gaussian_distance` of every (sampler, K) on Gaussian data of power ``v``, the samplers
    using ``reference`` (default ``v``) as their Gaussian reference. ``ddpm`` only at K = N."""
    rows = []
    for name in samplers:
        for K in counts:
            if name == "ddpm" and K != process.num_timesteps:
                continue
            s = Sampler(process, K, name, reference_var=v if reference is None else reference)
            rows.append({"sampler": name, "K": K, **gaussian_distance(output_variance(s, v), v)})
    return rows
