"""Sampling on all N steps or a strided subset: Eq. 12 (``ddpm``) and two exponential integrators.

docs/sampling.md derives everything here; DESIGN.md §1 fixes the notation. In short: keep the
steps ``N = s_K > … > s_1 ≥ 1`` and put ``s_0 = 0`` (the data). Between kept steps ``i = s_k``
and ``j = s_{k-1}`` the forward process is again diagonal in the basis,

    x̄_i = √a ⊙ x̄_j + √(1 - a) ⊙ ε̄,        a = Ā_i / Ā_j   (per frequency),

and every reverse step is, per frequency,

    x̄_j = c_x[k] ⊙ x̄_i + c_ε[k] ⊙ ε̄_θ(x_i, i) + σ[k] ⊙ z̄

with tables indexed by the *position* ``k`` in the strided sequence (row 0 unused):

- ``ddpm``: the paper's Eq. 12, ``c_x = 2 - √A_i``, ``c_ε = -(1 - A_i)/√(1 - Ā_i)``, ``σ² = 1 - A_i``
  (0 at the last step); a small-step formula, so only with all N steps. Bit for bit the tables of
  :meth:`BlurDiffusion.reverse_step`.
- ``ancestral`` (reverse SDE) and ``ddim`` (deterministic, probability-flow ODE): exponential
  integrators whose linear part includes the exact score of a Gaussian *reference* with the
  data's power ``v`` per frequency (the run's :class:`blurdiff.statistics.DataStatistics`); the
  network only corrects the residual ``r = ε̄_θ - σ x̄/s²``, ``s² = Ā v + 1 - Ā``. Exact for
  Gaussian data of spectrum ``v`` at any K, and with bounded coefficients where Ā is tiny (the
  old ``1/√a`` of DDIM amplified the network's error 3× per step at K = 50 under blur).

Each step is one ``spectral_lincomb`` beside the network.

    sampler = make_sampler(process, steps=50, kind="ancestral")   # or steps=None (all N), or a list
    x0 = sampler.sample(model, (16, 3, 64, 64), generator=g, device="cuda")
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from blurdiff_ops._checks import table_dtype_for
from blurdiff.progress import Progress

__all__ = ["KINDS", "Sampler", "default_kind", "make_sampler", "spaced_steps"]

KINDS = ("ddpm", "ancestral", "ddim")


def spaced_steps(num_steps: int, count: int) -> Tuple[int, ...]:
    """``count`` steps of ``1 … num_steps`` evenly spaced, both ends included, descending.

    ``s_k = round(1 + (k - 1)(N - 1)/(K - 1))`` for ``k = 1 … K``; ``K = N`` gives every step,
    ``K = 1`` the single step ``N``. Distinct for every ``K ≤ N`` (the spacing is at least 1).
    """
    N, K = int(num_steps), int(count)
    if not 1 <= K <= N:
        raise ValueError(f"the number of sampling steps must lie in 1 … {N} (the process's steps), got {count}")
    if K == 1:
        return (N,)
    return tuple(round(1 + (N - 1) * k / (K - 1)) for k in range(K - 1, -1, -1))


def _resolve_steps(num_steps: int, steps) -> Tuple[int, ...]:
    N = num_steps
    if steps is None:
        return tuple(range(N, 0, -1))
    if isinstance(steps, bool):
        raise ValueError(f"steps must be None, a count or a list of steps, got {steps!r}")
    if isinstance(steps, int):
        return spaced_steps(N, steps)
    if isinstance(steps, torch.Tensor):
        steps = steps.tolist()
    seq = [int(s) for s in steps]
    if not seq:
        raise ValueError("steps is an empty list")
    if len(set(seq)) != len(seq):
        raise ValueError(f"steps has repeated entries: {sorted(seq, reverse=True)}")
    seq = sorted(seq, reverse=True)
    if seq[0] != N or seq[-1] < 1:
        raise ValueError(
            f"steps must lie in 1 … {N} and include {N} (sampling starts from the prior x_N), got "
            f"values in [{seq[-1]}, {seq[0]}]"
        )
    return tuple(seq)


def _segment(process, i: int, j: int):
    """``log a``, ``a`` and ``1 - a`` for the segment ``j < i`` (``a = Ā_i / Ā_j``), float64."""
    if i - j == 1:
        # One original step: a = A_i, taken from the same tables as BlurDiffusion (bitwise).
        return process.log_A[i], process.A[i], process.one_minus_A[i]
    log_a = process.log_A[j + 1:i + 1].sum(dim=0)  # log(Ā_i / Ā_j), with no cancellation
    return log_a, log_a.exp(), -torch.expm1(log_a)


def _reference_step(process, i: int, j: int, v: torch.Tensor, stochastic: bool):
    """(c_x, c_ε, σ) of the exponential integrators with a Gaussian reference (docs/sampling.md §4).

    Per frequency, with ρ = Ā, σ² = 1 - ρ, s² = ρ v + σ² (the variance of x_t when x̄_0 has
    second moment ``v``) and the reference's exact ε̄_ref = σ x̄ / s²: the linear part of the
    reverse SDE / probability-flow ODE *including* the reference's score is integrated exactly, and
    the network's residual r = ε̄_θ - ε̄_ref is held at its value at step i.
    """
    log_a, a, one_minus_a = _segment(process, i, j)
    rho_i, rho_j = process.A_bar[i], process.A_bar[j]
    sig2_i, sig2_j = process.one_minus_A_bar[i], process.one_minus_A_bar[j]
    sig_i, sig_j = sig2_i.sqrt(), sig2_j.sqrt()
    s2_i, s2_j = rho_i * v + sig2_i, rho_j * v + sig2_j
    if stochastic:
        # Reverse SDE: x̄_j = m x̄_i - C r + τ z̄ with m = √a s_j²/s_i², τ² = s_j² (1-a)/s_i² (the
        # Gaussian's exact q(x_j | x_i)) and C = s_j²/√ρ_j ∫ √ρ/(σ s²) du = 2 s_j² q/X · atan(Z)/Z,
        # where Z = Y/X is the angle difference of (σ, √(vρ)) between the two steps, written
        # without cancellation: Y = √(v ρ_j) q, q = (1-a)/(σ_i + √a σ_j), X = σ_i σ_j + v √(ρ_i ρ_j).
        q = one_minus_a / (sig_i + a.sqrt() * sig_j)
        X = sig_i * sig_j + v * (rho_i * rho_j).sqrt()
        Z = (v * rho_j).sqrt() * q / X
        atan_ratio = torch.where(Z > 1e-6, torch.atan(Z) / Z.clamp_min(1e-6), 1 - Z * Z / 3)
        C = 2 * s2_j * q / X * atan_ratio
        m = a.sqrt() * s2_j / s2_i
        tau = (s2_j * one_minus_a / s2_i).sqrt()
    else:
        # Probability-flow ODE with the residual weighted by √w, w = ρv/s² the signal fraction:
        # x̄_j = (s_j/s_i) x̄_i - C r, C = ½ s_j ∫ √w/(σ s) du = s_j (θ_j - θ_i), θ = atan2(√(vρ), σ).
        q = one_minus_a / (sig_i + a.sqrt() * sig_j)
        X = sig_i * sig_j + v * (rho_i * rho_j).sqrt()
        C = s2_j.sqrt() * torch.atan2(v.sqrt() * rho_j.sqrt() * q, X)
        m = (s2_j / s2_i).sqrt()
        tau = torch.zeros_like(m)
    # In terms of the network's ε̄_θ: r = ε̄_θ - σ_i x̄_i / s_i².
    return m + C * sig_i / s2_i, -C, tau


def _step_tables(process, steps: Tuple[int, ...], kind: str, v: Optional[torch.Tensor]
                 ) -> Dict[str, Optional[torch.Tensor]]:
    """``step_coefs`` ``[2, K+1, H, W]`` (c_x, c_ε) and ``step_noise`` ``[K+1, H, W]`` (σ, or None)."""
    A, one_minus_A_bar = process.A, process.one_minus_A_bar
    asc = (0,) + tuple(reversed(steps))  # s_0 = 0 < s_1 < … < s_K = N
    K = len(steps)
    H, W = process.resolution
    c_x = torch.ones(K + 1, H, W, dtype=torch.float64)
    c_eps = torch.zeros(K + 1, H, W, dtype=torch.float64)
    sigma = torch.zeros(K + 1, H, W, dtype=torch.float64)
    for k in range(1, K + 1):
        i, j = asc[k], asc[k - 1]
        if kind == "ddpm":
            _, a, one_minus_a = _segment(process, i, j)
            c_x[k] = 2 - a.sqrt()
            c_eps[k] = -one_minus_a / one_minus_A_bar[i].sqrt()
            sigma[k] = one_minus_a.sqrt() if k > 1 else 0.0
        elif kind in ("ancestral", "ddim"):
            c_x[k], c_eps[k], sigma[k] = _reference_step(process, i, j, v, stochastic=kind == "ancestral")
        else:  # pragma: no cover - checked by the constructor
            raise AssertionError(kind)
    if kind == "ddpm":
        c_x[0], c_eps[0] = 2 - A[0].sqrt(), 0.0  # row 0 as BlurDiffusion has it (never used)
    return {
        "step_coefs": torch.stack([c_x, c_eps]),
        "step_noise": None if kind == "ddim" else sigma,
    }


def default_kind(K: int, N: int) -> str:
    """The paper's Eq. 12 (``ddpm``) with all N steps; the ``ancestral`` integrator with fewer."""
    return "ddpm" if K == N else "ancestral"


def _resolve_reference(process, kind: str, reference_var: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The Gaussian reference (spectral power per frequency, float64 ``[H, W]``) of the kinds that
    use one: given, else the process's data statistics, else a flat spectrum with a warning."""
    if kind == "ddpm":
        return None
    H, W = process.resolution
    if reference_var is None:
        stats = getattr(process, "data_stats", None)
        if stats is None:
            warnings.warn(
                f"the {kind} sampler has no data statistics for its Gaussian reference (a checkpoint from an "
                f"older version, or a process without data_stats): using a flat spectrum (1 at every "
                f"frequency), which is stable but less accurate. Set process.data_stats = "
                f"blurdiff.statistics.estimate_data_statistics(process, batches) to fix this",
                stacklevel=4)
            return torch.ones(H, W, dtype=torch.float64)
        return stats.reference_var
    v = torch.as_tensor(reference_var, dtype=torch.float64).cpu()
    if tuple(v.shape) != (H, W) or not torch.isfinite(v).all() or (v <= 0).any():
        raise ValueError(f"reference_var must be a positive, finite [{H}, {W}] tensor (the spectral power "
                         f"of the data per frequency), got shape {tuple(v.shape)}")
    return v


class Sampler:
    """A reverse process on the kept steps ``self.steps`` (descending), of one ``kind``.

    Tables are built once in float64 and cached per (device, dtype); each step is one
    ``spectral_lincomb`` of ``[x_i, ε_θ]`` (plus noise drawn in the spectral domain).
    """

    def __init__(self, process, steps: Union[None, int, Sequence[int]] = None, kind: Optional[str] = None,
                 reference_var: Optional[torch.Tensor] = None):
        self.process = process
        self.steps: Tuple[int, ...] = _resolve_steps(process.steps, steps)
        self.K = len(self.steps)
        self.kind = kind = default_kind(self.K, process.steps) if kind is None else kind
        if kind not in KINDS:
            raise ValueError(f"sampler kind must be one of {KINDS}, got {kind!r}")
        if kind == "ddpm" and self.K != process.steps:
            # Its 2 - √a and 1 - a are first-order in the step: strided, it over-disperses the
            # fine frequencies (10x their power at K = 100 with a trained network, docs/sampling.md).
            raise ValueError(f"the ddpm sampler (Eq. 12) is the paper's small-step formula and runs only with all "
                             f"{process.steps} steps, not {self.K}; with fewer steps use 'ancestral' (stochastic) "
                             f"or 'ddim' (deterministic)")
        self._position = {s: self.K - n for n, s in enumerate(self.steps)}  # step -> k
        self.reference_var = _resolve_reference(process, kind, reference_var)
        self._tables64 = _step_tables(process, self.steps, kind, self.reference_var)
        self._cache: Dict[Tuple[torch.device, torch.dtype], Dict[str, Optional[torch.Tensor]]] = {}

    def __repr__(self) -> str:
        return f"Sampler(kind={self.kind!r}, K={self.K} of N={self.process.steps})"

    # ------------------------------------------------------------------ tables
    def position(self, step: int) -> int:
        """The position ``k`` (1 … K) of a kept step ``s_k``."""
        if step not in self._position:
            raise ValueError(f"step {step} is not one of this sampler's {self.K} kept steps")
        return self._position[step]

    def tables(self, device, dtype: torch.dtype = torch.float32) -> Dict[str, Optional[torch.Tensor]]:
        """``step_coefs`` ``[2, K+1, H, W]``, ``step_noise`` ``[K+1, H, W]`` (None for ddim),
        ``timesteps`` (int64 ``[K+1]``, ``s_0 = 0 … s_K = N``), in the table dtype on ``device``."""
        key = (torch.device(device), table_dtype_for(dtype))
        if key not in self._cache:
            tab = {k: None if v is None else v.to(device=key[0], dtype=key[1]).contiguous()
                   for k, v in self._tables64.items()}
            tab["timesteps"] = torch.tensor((0,) + tuple(reversed(self.steps)), dtype=torch.int64, device=key[0])
            self._cache[key] = tab
        return self._cache[key]

    # ------------------------------------------------------------------ steps
    def _as_index(self, k, x: torch.Tensor) -> torch.Tensor:
        if isinstance(k, torch.Tensor):
            return k.to(device=x.device, dtype=torch.int64)
        k = int(k)
        if not 1 <= k <= self.K:
            raise ValueError(f"position k must lie in 1 … {self.K}, got {k}")
        return torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)

    def step(self, x: torch.Tensor, eps: torch.Tensor, k, noise: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One step from ``x_{s_k}`` to ``x_{s_{k-1}}`` (``k``: position, int or int64 ``[B]``).

        ``noise`` is pixel-space ``z`` (drawn from ``generator`` when not given); ddim ignores it.
        """
        proc = self.process
        tab = self.tables(x.device, x.dtype)
        ptab = proc.tables(x.device, x.dtype)
        noise_coef = tab["step_noise"]
        return proc.ops(x.device).spectral_lincomb(
            [x, eps], tab["step_coefs"], self._as_index(k, x), ptab["U_h"], ptab["U_w"],
            noise_coef, noise if noise_coef is not None else None, generator,
        )

    @torch.no_grad()
    def sample(self, model: Callable, shape, generator: Optional[torch.Generator] = None, device=None,
               dtype: torch.dtype = torch.float32, progress: bool = False,
               callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
               guard: bool = True) -> torch.Tensor:
        """Sample from the prior ``x_N`` down the kept steps; returns ``x_0`` (not clamped).

        ``callback(step, x_step, eps_pred)`` is called before each step, as in
        :meth:`BlurDiffusion.sample` (``step`` is the original step number ``s_k``). With ``guard``,
        the statistics of the result are checked and a
        :class:`blurdiff.quality.SamplesDivergedWarning` is issued when they show divergence.
        """
        proc = self.process
        x = proc.prior_sample(shape, generator, device, dtype)
        B = shape[0]
        tab = self.tables(x.device, x.dtype)
        ptab = proc.tables(x.device, x.dtype)
        ops = proc.ops(x.device)
        coefs, noise_coef, U_h, U_w = tab["step_coefs"], tab["step_noise"], ptab["U_h"], ptab["U_w"]
        desc = f"sampling ({self.kind}, {self.K}/{proc.steps} steps)"
        with Progress(self.K, desc, unit="step", enabled=progress) as bar:
            for n, s in enumerate(self.steps):
                k = self.K - n
                t = torch.full((B,), s, dtype=torch.int64, device=x.device)
                eps = model(x, t).to(x.dtype)
                if callback is not None:
                    callback(s, x, eps)
                idx = t if k == s else torch.full((B,), k, dtype=torch.int64, device=x.device)
                x = ops.spectral_lincomb([x, eps], coefs, idx, U_h, U_w, noise_coef, None, generator)
                bar.update(1)
        if guard:
            from blurdiff.quality import SampleStats, warn_if_diverged

            stats = proc.data_stats
            warn_if_diverged(SampleStats.of(x), stats.std if stats is not None else None, f"{self!r}")
        return x


def make_sampler(process, steps: Union[None, int, Sequence[int]] = None, kind: Optional[str] = None) -> Sampler:
    """The sampler of ``process`` on ``steps`` (None: all N; an int K: K evenly spaced; or a list),
    with the process's data statistics as the Gaussian reference of ``ancestral``/``ddim``;
    ``kind`` None is :func:`default_kind`.

    Samplers are cached per process, so their device tables are built once.
    """
    resolved = _resolve_steps(process.steps, steps)
    kind = default_kind(len(resolved), process.steps) if kind is None else kind
    # Kept on the process (a cycle the garbage collector frees with it; a module-level
    # WeakKeyDictionary would never free it, since each Sampler refers to its process).
    # BlurDiffusion.data_stats clears it when the reference changes.
    per_process = process.__dict__.setdefault("_respace_samplers", {})
    key = (resolved, kind)
    if key not in per_process:
        per_process[key] = Sampler(process, resolved, kind)
    return per_process[key]
