"""Sampling on all N steps or a strided subset: Eq. 12 (``ddpm``) and two exponential integrators.

docs/sampling.md derives everything here (the kept steps ``N = s_K > … > s_1 ≥ 1``, ``s_0 = 0``; the
tables indexed by the *position* ``k`` in that sequence, row 0 unused); docs/design.md §4 lists the samplers.

    sampler = make_sampler(process, steps=50, sampler="ancestral")   # or steps=None (all N), or a list
    x0 = sampler.sample(model, (16, 3, 64, 64), generator=g, device="cuda")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from blurdiff.progress import Progress
from blurdiff.sample_guard import SampleStats, warn_if_diverged
from blurdiff.schedules import int_arg
from blurdiff.tables import TableCache

__all__ = ["DEFAULT_SPACING", "SAMPLERS", "MULTISTEP", "SPACINGS", "STOCHASTIC", "Sampler"]
__all__ += ["default_sampler", "make_sampler", "spaced_steps", "strided_steps"]

SAMPLERS = ("ddpm", "ancestral", "ddim", "ancestral2m", "ddim2m")
STOCHASTIC = ("ddpm", "ancestral", "ancestral2m")  # the samplers that draw noise
MULTISTEP = ("ancestral2m", "ddim2m")  # second order: the previous step's prediction is one more input


def spaced_steps(num_steps: int, count: int) -> tuple[int, ...]:
    """``count`` steps of ``1 … num_steps`` evenly spaced, both ends included, descending
    (docs/sampling.md §1); distinct for every ``K ≤ N`` (the spacing is at least 1)."""
    N, K = int(num_steps), int(count)
    if not 1 <= K <= N:
        raise ValueError(f"the number of sampling steps must lie in 1 … {N} (the process's steps), got {count}")
    if K == 1:
        return (N,)
    return tuple(round(1 + (N - 1) * k / (K - 1)) for k in range(K - 1, -1, -1))


SPACINGS = ("uniform", "quadratic", "logsnr")


def _distinct_ascending(values: Sequence[float], N: int) -> list[int]:
    """Round ascending ``values`` in [1, N] to distinct integer steps, the first 1 and the last N:
    where rounding would repeat a step, the later ones move up (the total stays K)."""
    K = len(values)
    out = [min(max(int(round(v)), 1), N) for v in values]
    out[0], out[-1] = 1, N
    for k in range(1, K):  # at least one apart, leaving room for the ones after
        out[k] = min(max(out[k], out[k - 1] + 1), N - (K - 1 - k))
    return out


def strided_steps(process, count: int, spacing: str = "uniform") -> tuple[int, ...]:
    """``count`` of the process's steps ``1 … N``, descending, both ends included, placed by
    ``spacing`` (:data:`SPACINGS`, docs/sampling.md §7)."""
    N, K = process.num_timesteps, int(count)
    uniform = spaced_steps(N, count)  # checks that 1 <= K <= N
    if spacing == "uniform" or K == 1:
        return uniform
    frac = torch.linspace(0, 1, K, dtype=torch.float64)
    if spacing == "quadratic":
        values = (1 + (N - 1) * frac**2).tolist()
    elif spacing == "logsnr":
        flat = process.D.flatten()
        mid = int(torch.argsort(flat)[flat.numel() // 2])
        log_abar = process.log_A_bar.flatten(1)[:, mid]  # [N + 1], decreasing in t
        log_snr = log_abar - torch.log(-torch.expm1(log_abar.clamp(max=-1e-300)))
        targets = log_snr[1] + (log_snr[N] - log_snr[1]) * frac  # from t = 1 to t = N
        # λ(t) decreases: the step whose λ is nearest each target.
        lam = log_snr[1:]  # t = 1 … N
        idx = torch.searchsorted(-lam, -targets).clamp(max=N - 1)
        lower = (idx - 1).clamp(min=0)
        nearer = torch.where((lam[lower] - targets).abs() < (lam[idx] - targets).abs(), lower, idx)
        values = (nearer + 1).to(torch.float64).tolist()
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return tuple(reversed(_distinct_ascending(values, N)))


def _listed_steps(process, steps) -> tuple[int, ...]:
    """The kept steps of ``steps`` None (all N) or a list of them, descending."""
    N = process.num_timesteps
    if steps is None:
        return tuple(range(N, 0, -1))
    if isinstance(steps, torch.Tensor):
        steps = steps.tolist()
    if not isinstance(steps, Sequence) or isinstance(steps, str):  # a bool too
        raise ValueError(f"steps must be None, a count or a list of steps, got {steps!r}")
    seq = [int_arg("each of steps", s, 1) for s in steps]
    if not seq:
        raise ValueError("steps is an empty list")
    if len(set(seq)) != len(seq):
        raise ValueError(f"steps has repeated entries: {sorted(seq, reverse=True)}")
    seq = sorted(seq, reverse=True)
    if seq[0] != N:  # each is at least 1 (int_arg)
        raise ValueError(
            f"steps must lie in 1 … {N} and include {N} (sampling starts from the prior x_N), got "
            f"values in [{seq[-1]}, {seq[0]}]"
        )
    return tuple(seq)


def _segment(process, i: int, j: int):
    """``a`` and ``1 - a`` for the segment ``j < i`` (``a = Ā_i / Ā_j``), float64."""
    if i - j == 1:
        # One original step: a = A_i, taken from the process's own tables (bitwise).
        return process.A[i], process.one_minus_A[i]
    log_a = process.log_A[j + 1 : i + 1].sum(dim=0)  # log(Ā_i / Ā_j), with no cancellation
    return log_a.exp(), -torch.expm1(log_a)


def _reference_segment(process, i: int, j: int, v: torch.Tensor, stochastic: bool):
    """The pieces of one step ``i → j`` of the exponential integrators, per frequency, float64:
    ``(m, τ, h, W h, σ_i/s_i², θ_i)`` of ``x̄_j = m x̄_i - W ∫ r dθ + τ z̄`` (docs/sampling.md §4–§6;
    ``W h`` is computed as one product so that it stays finite where ρ_j underflows)."""
    a, one_minus_a = _segment(process, i, j)
    rho_i, rho_j = process.A_bar[i], process.A_bar[j]
    sig2_i, sig2_j = process.one_minus_A_bar[i], process.one_minus_A_bar[j]
    sig_i, sig_j = sig2_i.sqrt(), sig2_j.sqrt()
    s2_i, s2_j = rho_i * v + sig2_i, rho_j * v + sig2_j
    # θ_j - θ_i = atan(Z): Z = √(v ρ_j) q / X, q = (1-a)/(σ_i + √a σ_j) = √(ρ_j)⁻¹(√ρ_j σ_i - √ρ_i σ_j),
    # X = σ_i σ_j + v √(ρ_i ρ_j) (tan of a difference of angles).
    q = one_minus_a / (sig_i + a.sqrt() * sig_j)
    X = sig_i * sig_j + v * (rho_i * rho_j).sqrt()
    Z = (v * rho_j).sqrt() * q / X
    h = torch.atan(Z)
    theta_i = torch.atan2((v * rho_i).sqrt(), sig_i)
    if stochastic:
        # Reverse SDE: m = √a s_j²/s_i² and τ² = s_j² (1-a)/s_i² are the Gaussian's exact q(x_j | x_i).
        atan_ratio = torch.where(Z > 1e-6, h / Z.clamp_min(1e-6), 1 - Z * Z / 3)
        Wh = 2 * s2_j * q / X * atan_ratio
        m = a.sqrt() * s2_j / s2_i
        tau = (s2_j * one_minus_a / s2_i).sqrt()
    else:
        # Probability-flow ODE with the residual weighted by √w, w = ρ v / s²: d(x̄/s)/dθ = -r.
        Wh = s2_j.sqrt() * h
        m = (s2_j / s2_i).sqrt()
        tau = torch.zeros_like(m)
    return m, tau, h, Wh, sig_i / s2_i, theta_i


_GAUSS_NODES, _GAUSS_WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(24))


def _extrapolation_weight(theta_p, theta_i, theta_j, h):
    """``b`` in ``∫_{θ_i}^{θ_j} r dθ ≈ h r_i + h b (r_i - r_p)`` for r linear in the log-SNR
    λ = 2 ln tan θ - ln v, by Gauss–Legendre quadrature per frequency (docs/sampling.md §6)."""
    nodes = _GAUSS_NODES.to(theta_i)[:, None, None]
    theta = theta_i + (theta_j - theta_i) * (nodes + 1) / 2
    log_tan_i = torch.log(torch.tan(theta_i))
    integral = (
        0.5 * h * (_GAUSS_WEIGHTS.to(theta_i)[:, None, None] * 2 * (torch.log(torch.tan(theta)) - log_tan_i)).sum(0)
    )
    b = integral / (h * 2 * (log_tan_i - torch.log(torch.tan(theta_p))))
    # A frequency whose log-SNR does not move over the steps (rissanen's mean colour: h = 0 and
    # λ_i = λ_p) or that holds no signal at all (θ = 0, λ = -∞) has no slope to extrapolate: first order.
    return torch.where(torch.isfinite(b), b, torch.zeros_like(b))


def _eq12_tables(process) -> dict[str, torch.Tensor]:
    """The ``ddpm`` tables on all N steps (position k is step i = k): Eq. 12, docs/design.md §1."""
    A, one_minus_A = process.A, process.one_minus_A
    step_eps = torch.zeros_like(A)
    step_eps[1:] = -one_minus_A[1:] / process.one_minus_A_bar[1:].sqrt()
    step_noise = one_minus_A.sqrt()
    step_noise[:2] = 0.0  # no noise at the last step (i = 1); row 0 is never used
    return _on_the_process(
        process, tuple(range(process.num_timesteps, 0, -1)), torch.stack([2 - A.sqrt(), step_eps]), step_noise
    )


def _on_the_process(process, steps: tuple[int, ...], coefs: torch.Tensor, sigma: torch.Tensor | None):
    """The step tables of the variance-preserving ``ȳ = x̄/c`` (``c = process.scale``) as tables of
    ``x̄`` itself (docs/sampling.md §8, "The other process families"); unchanged for the paper's process."""
    if process.scale is not None:
        asc = (0,) + tuple(reversed(steps))
        c = process.scale
        coefs, sigma = coefs.clone(), None if sigma is None else sigma.clone()
        for k in range(len(steps), 0, -1):
            i, j = asc[k], asc[k - 1]
            coefs[:, k] *= c[j]
            coefs[0, k] /= c[i]
            if coefs.shape[0] == 4 and k < len(steps):
                coefs[3, k] /= c[asc[k + 1]]
            if sigma is not None:
                sigma[k] *= c[j]
    return {"step_coefs": coefs, "step_noise": sigma}


def _step_tables(process, steps: tuple[int, ...], name: str, v: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """``step_coefs`` ``[I, K+1, H, W]`` and ``step_noise`` ``[K+1, H, W]`` (σ, or None), for the
    inputs ``[x_i, ε_i]`` (I = 2) or, for the multistep kinds, ``[x_i, ε_i, ε_prev, x_prev]``."""
    if name == "ddpm":  # only on all N steps (Sampler checks)
        return _eq12_tables(process)
    asc = (0,) + tuple(reversed(steps))  # s_0 = 0 < s_1 < … < s_K = N
    K = len(steps)
    H, W = process.resolution
    inputs = 4 if name in MULTISTEP else 2
    coefs = torch.zeros(inputs, K + 1, H, W, dtype=torch.float64)
    coefs[0] = 1.0
    sigma = torch.zeros(K + 1, H, W, dtype=torch.float64)
    stochastic = name in STOCHASTIC
    h_prev = gain_prev = theta_prev = None  # the angle increment, σ/s² and θ of the step before (k + 1)
    for k in range(K, 0, -1):
        i, j = asc[k], asc[k - 1]
        m, tau, h, Wh, gain, theta_i = _reference_segment(process, i, j, v, stochastic)
        # ∫ r dθ ≈ h r_i, or (multistep: r linear in the log-SNR λ through r_prev, not at the last
        # step, whose λ_j is infinite) h r_i + h b (r_i - r_prev).
        if name in MULTISTEP and h_prev is not None and j > 0:
            b_prev = _extrapolation_weight(theta_prev, theta_i, theta_i + h, h)
        else:
            b_prev = torch.zeros_like(h)
        c_i, c_prev = Wh * (1 + b_prev), Wh * b_prev  # x̄_j = m x̄_i - c_i r_i + c_prev r_prev + τ z̄
        coefs[0, k] = m + c_i * gain
        coefs[1, k] = -c_i
        if inputs == 4:
            coefs[2, k] = c_prev
            coefs[3, k] = -c_prev * gain_prev if gain_prev is not None else 0.0
        sigma[k] = tau
        h_prev, gain_prev, theta_prev = h, gain, theta_i
    return _on_the_process(process, steps, coefs, sigma if name in STOCHASTIC else None)


def default_sampler(K: int, N: int) -> str:
    """The paper's Eq. 12 (``ddpm``) with all N steps; the second-order ``ancestral2m`` integrator
    with fewer (the best few-step sampler measured, docs/sampling.md §9)."""
    return "ddpm" if K == N else "ancestral2m"


#: The spacing of the K kept steps that measured best for each sampler (docs/sampling.md §7).
DEFAULT_SPACING = {name: "quadratic" if name in MULTISTEP else "uniform" for name in SAMPLERS}


def _resolve(process, steps, sampler: str | None, spacing: str | None) -> tuple[tuple[int, ...], str, str]:
    """(kept timesteps, sampler name, spacing) with the defaults filled: the sampler from the
    number of steps, the spacing from the sampler."""
    count = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
    listed = _listed_steps(process, steps) if count is None else None
    name = default_sampler(len(listed) if listed else count, process.num_timesteps) if sampler is None else sampler
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    spacing = DEFAULT_SPACING[name] if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return listed or strided_steps(process, count, spacing), name, spacing


def _resolve_reference(process, name: str, reference_var: torch.Tensor | None) -> torch.Tensor | None:
    """The Gaussian reference (spectral power per frequency, float64 ``[H, W]``) of the kinds that
    use one: given, else the process's data statistics, else a flat spectrum with a warning."""
    if name == "ddpm" and process.family == "lee":
        return None  # Eq. 12 and the paper's prior need no reference
    if reference_var is None:
        return process._data_power(f"the {name} sampler's Gaussian reference")
    H, W = process.resolution
    v = torch.as_tensor(reference_var, dtype=torch.float64).cpu()
    if tuple(v.shape) != (H, W) or not torch.isfinite(v).all() or (v <= 0).any():
        raise ValueError(
            f"reference_var must be a positive, finite [{H}, {W}] tensor (the spectral power "
            f"of the data per frequency), got shape {tuple(v.shape)}"
        )
    return v


class Sampler:
    """The reverse process of one ``sampler`` (its :attr:`name`, one of :data:`SAMPLERS`) on the kept
    timesteps :attr:`timesteps` (descending, K of the process's N): :meth:`step`, one
    ``spectral_lincomb``, and :meth:`sample`, the loop of it from the prior."""

    def __init__(
        self,
        process,
        steps: None | int | Sequence[int] = None,
        sampler: str | None = None,
        reference_var: torch.Tensor | None = None,
        spacing: str | None = None,
    ):
        self.process = process
        self.timesteps, self.name, self.spacing = _resolve(process, steps, sampler, spacing)
        self.K = len(self.timesteps)
        name = self.name
        if name == "ddpm" and self.K != process.num_timesteps:
            # First-order in the step: strided, it over-disperses the fine frequencies (docs/sampling.md §2).
            raise ValueError(
                f"the ddpm sampler (Eq. 12) is the paper's small-step formula and runs only with all "
                f"{process.num_timesteps} steps, not {self.K}; with fewer steps use 'ancestral' (stochastic) "
                f"or 'ddim' (deterministic)"
            )
        self._position = {s: self.K - n for n, s in enumerate(self.timesteps)}  # step -> k
        self.reference_var = _resolve_reference(process, name, reference_var)
        tables = _step_tables(process, self.timesteps, name, self.reference_var)
        bad = [key for key, table in tables.items() if table is not None and not torch.isfinite(table).all()]
        if bad:  # NaN images, written as black PNGs, otherwise
            raise ValueError(
                f"the {name} sampler's {bad[0]} on {self.K} steps is not finite for this process "
                f"({', '.join(f'{k}={v!r}' for k, v in process.config.to_dict().items())})"
            )
        tables["timesteps"] = torch.tensor((0,) + tuple(reversed(self.timesteps)), dtype=torch.int64)
        self._tables = TableCache(tables)

    def __repr__(self) -> str:
        return f"Sampler(sampler={self.name!r}, K={self.K} of N={self.process.num_timesteps}, spacing={self.spacing!r})"

    # ------------------------------------------------------------------ tables
    def position(self, step: int) -> int:
        """The position ``k`` (1 … K) of a kept step ``s_k``."""
        if step not in self._position:
            raise ValueError(f"step {step} is not one of this sampler's {self.K} kept steps")
        return self._position[step]

    def tables(self, device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        """``step_coefs`` ``[I, K+1, H, W]``, ``step_noise`` ``[K+1, H, W]`` (None for the ddim kinds),
        ``timesteps`` (int64 ``[K+1]``, ``s_0 = 0 … s_K = N``), in the table dtype on ``device``."""
        return self._tables.on(device, dtype)

    @property
    def tables64(self) -> dict[str, torch.Tensor | None]:
        """The same tables as built, in float64 on the CPU (for exact analysis)."""
        return self._tables.float64

    # ------------------------------------------------------------------ steps
    def _as_index(self, k, x: torch.Tensor) -> torch.Tensor:
        if isinstance(k, torch.Tensor):
            return k.to(device=x.device, dtype=torch.int64)
        k = int(k)
        if not 1 <= k <= self.K:
            raise ValueError(f"position k must lie in 1 … {self.K}, got {k}")
        return torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)

    def step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        k,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prev: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One step from ``x_{s_k}`` to ``x_{s_{k-1}}`` (``k``: position, int or int64 ``[B]``). ``noise``
        is pixel-space ``z`` (drawn from ``generator`` when not given; the deterministic kinds ignore it).
        The multistep kinds take ``prev = (x_{s_{k+1}}, ε_θ there)`` (may be None at the first step ``k = K``)."""
        tab = self.tables(x.device, x.dtype)
        inputs = [x, eps]
        if self.name in MULTISTEP:
            x_prev, eps_prev = prev if prev is not None else (x, eps)  # coefficients 0 at the first step
            inputs += [eps_prev, x_prev]
        noise_coef = tab["step_noise"]
        noise = noise if noise_coef is not None else None
        return self.process.lincomb(inputs, self._as_index(k, x), tab["step_coefs"], noise_coef, noise, generator)

    @torch.no_grad()
    def sample(
        self,
        model: Callable,
        shape,
        generator: torch.Generator | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        guard: bool = True,
        cuda_graph: bool = False,
    ) -> torch.Tensor:
        """Sample from the prior ``x_N`` down the kept steps; returns ``x_0`` (not clamped).
        ``callback`` and ``guard``: as in :meth:`BlurDiffusion.sample` (``callback``'s step is ``s_k``).
        ``cuda_graph``: the step (network and op) captured once as a CUDA graph and replayed K times,
        the same samples as without it (:func:`_graph_loop`); a ValueError off CUDA devices."""
        proc = self.process
        x = proc.prior_sample(shape, generator, device, dtype, self.reference_var)
        if cuda_graph and x.device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, got {x.device.type}")
        desc = f"sampling ({self.name}, {self.K}/{proc.num_timesteps} steps)"
        with Progress(self.K, desc, unit="step", enabled=progress) as bar:
            if cuda_graph:
                with torch.cuda.device(x.device):  # streams and the graph are the current device's
                    x = _graph_loop(self, model, x, generator, callback, bar)
            else:
                prev = None
                for n, s in enumerate(self.timesteps):
                    eps = model(x, torch.full((shape[0],), s, dtype=torch.int64, device=x.device)).to(x.dtype)
                    if callback is not None:
                        callback(s, x, eps)
                    x, prev = self.step(x, eps, self.K - n, generator=generator, prev=prev), (x, eps)
                    bar.update(1)
        if guard:
            stats = proc.data_stats
            warn_if_diverged(SampleStats.of(x), stats.std if stats is not None else None, f"{self!r}")
        return x


class _CudaGraph:
    """The CUDA part of :func:`_graph_loop` (the CPU tests put a fake in its place): ``body`` (no
    arguments, returns tensors) run eagerly on a side stream, as torch requires before a capture
    (lazy state: the tables on the device, library handles, workspaces), then captured once."""

    WARMUP = 3  # torch.cuda.make_graphed_callables' default

    def __init__(self, generator: torch.Generator | None):
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:  # the default generator is registered by every capture
            self.graph.register_generator_state(generator)

    def capture(self, body: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """The tensors ``body`` returned while captured: each :meth:`replay` writes into them."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                body()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            outputs = body()
        return outputs

    def replay(self) -> None:
        self.graph.replay()


def _graph_loop(sampler: Sampler, model: Callable, x: torch.Tensor, generator, callback, bar) -> torch.Tensor:
    """The loop of :meth:`Sampler.sample` from the prior ``x`` with its step captured once and
    replayed K times: the same samples, callbacks and progress as the eager loop.

    The graph reads static buffers that the loop sets between replays: ``x`` (``x_{s_k}``), ``t``
    (``s_k``) and ``k`` for each sample, and for the multistep kinds the step before's ``x`` and ε.
    The eager loop's first step takes ``prev = (x, ε)`` with coefficients ±0; here ``x_prev`` is
    ``x`` and ``eps_prev`` 0. The kernels (and the reference) sum the inputs' terms from +0, so the
    sum is never -0 and adding ±0·F(0) or ±0·F(ε) leaves it unchanged: the same bits whenever F(ε)
    is finite (else the ε term itself is not). Nothing in the step reads the device back
    (blurdiff_ops skips its range check of ``t`` while a capture is underway).

    Random numbers: the op takes its Philox (seed, offset) from the generator through
    ``philox_cuda_state``. A capture does not advance the generator; each replay reads its current
    offset and advances it by what the captured step drew, as an eager step does. The warm-up runs
    draw as eager steps do, so the generator's state is put back as the prior left it before the
    first replay: the K replays then draw at the eager loop's K offsets.
    """
    multistep = sampler.name in MULTISTEP
    B, device = x.shape[0], x.device
    rng = generator if generator is not None else _default_generator(device)
    t = torch.full((B,), sampler.timesteps[0], dtype=torch.int64, device=device)
    k = torch.full((B,), sampler.K, dtype=torch.int64, device=device)
    x_prev, eps_prev = (x.clone(), torch.zeros_like(x)) if multistep else (None, None)
    prev = (x_prev, eps_prev) if multistep else None

    def body():
        eps = model(x, t).to(x.dtype)
        return eps, sampler.step(x, eps, k, generator=generator, prev=prev)

    state = rng.get_state()
    graph = _CudaGraph(generator)
    eps, x_out = graph.capture(body)
    rng.set_state(state)
    for n, s in enumerate(sampler.timesteps):
        if n:  # the step before's output is this step's input, and (multistep) its prev
            if multistep:
                x_prev.copy_(x)
                eps_prev.copy_(eps)
            x.copy_(x_out)
            t.fill_(s)
            k.fill_(sampler.K - n)
        graph.replay()
        if callback is not None:  # tensors of its own, as the eager loop's (the buffers change)
            callback(s, x.clone(), eps.clone())
        bar.update(1)
    return x_out.clone()


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator that ops on ``device`` draw from when given none."""
    return torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator


def make_sampler(
    process, steps: None | int | Sequence[int] = None, sampler: str | None = None, spacing: str | None = None
) -> Sampler:
    """The sampler of ``process`` on ``steps`` (None: all N; an int K: K placed by ``spacing``; or
    a list), with the process's data statistics as the Gaussian reference of the integrators;
    ``sampler`` None is :func:`default_sampler`, ``spacing`` None :data:`DEFAULT_SPACING` of it.
    Kept on the process until its data statistics change (``BlurDiffusion.data_stats_cache``)."""
    cache = process.data_stats_cache
    # The arguments as given find the sampler without resolving the steps again (a tuple of N
    # steps per call of BlurDiffusion.reverse_step); only plain ones (a list is not hashable).
    plain = (steps is None or type(steps) is int) and all(a is None or type(a) is str for a in (sampler, spacing))
    call = ("make_sampler", steps, sampler, spacing) if plain else None
    if call in cache:
        return cache[call]
    resolved, name, spacing = _resolve(process, steps, sampler, spacing)
    key = ("sampler", resolved, name)
    if key not in cache:
        cache[key] = Sampler(process, resolved, name, spacing=spacing)
    if call is not None:
        cache[call] = cache[key]
    return cache[key]
