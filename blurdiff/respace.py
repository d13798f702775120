"""Sampling on a strided subset of the N steps: the DDPM (Eq. 12), ancestral and DDIM forms.

docs/sampling.md derives everything here; DESIGN.md §1 fixes the notation. In short: keep the
steps ``N = s_K > … > s_1 ≥ 1`` and put ``s_0 = 0`` (the data). Between kept steps ``i = s_k``
and ``j = s_{k-1}`` the forward process is again diagonal in the basis,

    x̄_i = √a ⊙ x̄_j + √(1 - a) ⊙ ε̄,        a = Ā_i / Ā_j   (per frequency),

so ``a`` plays the role of ``A_i`` and every reverse step is, per frequency,

    x̄_j = c_x[k] ⊙ x̄_i + c_ε[k] ⊙ ε̄_θ(x_i, i) + σ[k] ⊙ z̄

with tables indexed by the *position* ``k`` in the strided sequence (row 0 unused):

    kind        c_x          c_ε                                 σ²
    ddpm        2 - √a       -(1 - a)/√(1 - Ā_i)                 1 - a   (0 at k = 1)
    ancestral   1/√a         -(1 - a)/(√a √(1 - Ā_i))            (1 - Ā_j)(1 - a)/(1 - Ā_i)
    ddim        1/√a         √(1 - Ā_j) - √(1 - Ā_i)/√a          0

Each step is one ``spectral_lincomb`` beside the network. With every step kept (``K = N``) the
``ddpm`` tables are bit for bit those of :meth:`BlurDiffusion.reverse_step`, and
:meth:`Sampler.sample` reproduces :meth:`BlurDiffusion.sample` exactly (same seed, same images).

    sampler = make_sampler(process, steps=50, kind="ddim")   # or steps=None (all N), or a list
    x0 = sampler.sample(model, (16, 3, 64, 64), generator=g, device="cuda")
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from blurdiff_ops._checks import table_dtype_for
from blurdiff.progress import Progress

__all__ = ["KINDS", "Sampler", "make_sampler", "spaced_steps"]

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


def _step_tables(process, steps: Tuple[int, ...], kind: str) -> Dict[str, Optional[torch.Tensor]]:
    """``step_coefs`` ``[2, K+1, H, W]`` (c_x, c_ε) and ``step_noise`` ``[K+1, H, W]`` (σ, or None)."""
    log_A, A, one_minus_A, one_minus_A_bar = process.log_A, process.A, process.one_minus_A, process.one_minus_A_bar
    asc = (0,) + tuple(reversed(steps))  # s_0 = 0 < s_1 < … < s_K = N
    K = len(steps)
    H, W = process.resolution
    c_x = torch.ones(K + 1, H, W, dtype=torch.float64)
    c_eps = torch.zeros(K + 1, H, W, dtype=torch.float64)
    sigma = torch.zeros(K + 1, H, W, dtype=torch.float64)
    for k in range(1, K + 1):
        i, j = asc[k], asc[k - 1]
        if i - j == 1:
            # One original step: a = A_i, taken from the same tables as BlurDiffusion (bitwise).
            log_a, a, one_minus_a = log_A[i], A[i], one_minus_A[i]
        else:
            log_a = log_A[j + 1:i + 1].sum(dim=0)  # log(Ā_i / Ā_j), with no cancellation
            a, one_minus_a = log_a.exp(), -torch.expm1(log_a)
        sqrt_1m_Ai = one_minus_A_bar[i].sqrt()
        inv_sqrt_a = torch.exp(-0.5 * log_a)
        if kind == "ddpm":
            c_x[k] = 2 - a.sqrt()
            c_eps[k] = -one_minus_a / sqrt_1m_Ai
            sigma[k] = one_minus_a.sqrt() if k > 1 else 0.0
        elif kind == "ancestral":
            c_x[k] = inv_sqrt_a
            c_eps[k] = -one_minus_a * inv_sqrt_a / sqrt_1m_Ai
            sigma[k] = (one_minus_A_bar[j] * one_minus_a / one_minus_A_bar[i]).sqrt()
        elif kind == "ddim":
            c_x[k] = inv_sqrt_a
            c_eps[k] = one_minus_A_bar[j].sqrt() - sqrt_1m_Ai * inv_sqrt_a
        else:  # pragma: no cover - checked by the constructor
            raise AssertionError(kind)
    if kind == "ddpm":
        c_x[0], c_eps[0] = 2 - A[0].sqrt(), 0.0  # row 0 as BlurDiffusion has it (never used)
    return {
        "step_coefs": torch.stack([c_x, c_eps]),
        "step_noise": None if kind == "ddim" else sigma,
    }


class Sampler:
    """A reverse process on the kept steps ``self.steps`` (descending), of one ``kind``.

    Tables are built once in float64 and cached per (device, dtype); each step is one
    ``spectral_lincomb`` of ``[x_i, ε_θ]`` (plus noise drawn in the spectral domain).
    """

    def __init__(self, process, steps: Union[None, int, Sequence[int]] = None, kind: str = "ddpm"):
        if kind not in KINDS:
            raise ValueError(f"sampler kind must be one of {KINDS}, got {kind!r}")
        self.process = process
        self.kind = kind
        self.steps: Tuple[int, ...] = _resolve_steps(process.steps, steps)
        self.K = len(self.steps)
        self._position = {s: self.K - n for n, s in enumerate(self.steps)}  # step -> k
        self._tables64 = _step_tables(process, self.steps, kind)
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
               callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
        """Sample from the prior ``x_N`` down the kept steps; returns ``x_0``.

        ``callback(step, x_step, eps_pred)`` is called before each step, as in
        :meth:`BlurDiffusion.sample` (``step`` is the original step number ``s_k``).
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
        return x


def make_sampler(process, steps: Union[None, int, Sequence[int]] = None, kind: str = "ddpm") -> Sampler:
    """The sampler of ``process`` on ``steps`` (None: all N; an int K: K evenly spaced; or a list).

    Samplers are cached per process, so their device tables are built once.
    """
    resolved = _resolve_steps(process.steps, steps)
    # Kept on the process (a cycle the garbage collector frees with it; a module-level
    # WeakKeyDictionary would never free it, since each Sampler refers to its process).
    per_process = process.__dict__.setdefault("_respace_samplers", {})
    key = (resolved, kind)
    if key not in per_process:
        per_process[key] = Sampler(process, resolved, kind)
    return per_process[key]
