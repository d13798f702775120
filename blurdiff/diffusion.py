"""``BlurDiffusion``: the forward process, training loss, the reference score; sampling.

docs/design.md §1, §4: every operator is one ``blurdiff_ops.spectral_lincomb`` over per-frequency tables
``[N+1, H, W]``, built once in float64 (in log space, so a tiny ``Ā_i`` keeps its relative precision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

import blurdiff_ops
from blurdiff.bases import check_basis_args, check_resolution, make_basis
from blurdiff.devices import sampling_network
from blurdiff.families import check_family_args, hoogeboom_tables, rissanen_tables
from blurdiff.samplers import make_sampler
from blurdiff.schedules import F_MAX_LIMIT, blur_f, check_tables_fit, int_arg, noise_betas, real_arg
from blurdiff.tables import TableCache
from blurdiff.warn import warn_at_caller

DIRECTIONS = ("coarse_to_fine", "fine_to_coarse")
BACKENDS = ("auto", "fused", "reference")

#: Regularisation of x̂_0 = √Ā/(Ā + δ(1-Ā)) ⊙ (x̄_t - √(1-Ā) ε̄): the exact inverse wherever the
#: signal-to-noise ratio Ā/(1-Ā) is well above δ, shrinking to 0 where it is not (there the exact
#: 1/√Ā would amplify the network's error by up to 1e80, or overflow float32).
X0_REG = 1e-6


@dataclass(frozen=True)
class ProcessConfig:
    """What a :class:`BlurDiffusion` is (docs/design.md §1): :meth:`to_dict` of it is the
    ``process`` of checkpoints, run configs and exports; its fields are the ``process`` section of
    ``--set``/``--config`` (blurdiff.settings). ``resolution`` is kept as ``(H, W)``; ``num_timesteps`` is N."""

    resolution: int | tuple[int, int] = 64
    basis: str = "gaussian"
    sigma: float = 0.4
    blur_schedule: str = "quartic"
    f_max: float = 0.140625
    noise_schedule: str = "linear"
    num_timesteps: int = 1000
    direction: str = "coarse_to_fine"
    eig_floor: float = 0.03
    family: str = "lee"  # blurdiff.families: the paper's process, or another coarse-to-fine one
    blur_sigma_max: float = 20.0
    d_min: float = 0.001
    blur_sigma_min: float = 0.5
    noise_sigma: float = 0.01

    def __post_init__(self):
        check_resolution(self.resolution)
        r = self.resolution
        # Configs come back from JSON with lists; keep them hashable and comparable.
        object.__setattr__(self, "resolution", (r, r) if isinstance(r, int) else (int(r[0]), int(r[1])))
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check_basis_args(self.sigma, self.eig_floor)
        check_family_args(self.family, self.blur_sigma_max, self.d_min, self.blur_sigma_min, self.noise_sigma)
        if self.family != "lee" and self.basis != "dct":
            raise ValueError(
                f"the {self.family} family runs in the DCT basis: set basis='dct', got basis={self.basis!r}"
            )
        real_arg("f_max", self.f_max, 0.0, F_MAX_LIMIT)
        int_arg("num_timesteps", self.num_timesteps, 1)

    def to_dict(self) -> dict[str, Any]:
        """What checkpoints, run configs and exports record: every field but the families', and those of
        its own family only (the paper's process records no family field)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ALL_FAMILY_FIELDS}
        if self.family != "lee":
            record.update(family=self.family, **{name: getattr(self, name) for name in _FAMILY_FIELDS[self.family]})
        return record


#: The fields each family other than the paper's records (in this order), beside ``family``.
_FAMILY_FIELDS = {
    "hoogeboom": ("blur_sigma_max", "d_min"),
    "rissanen": ("blur_sigma_min", "blur_sigma_max", "noise_sigma"),
}
_ALL_FAMILY_FIELDS = ("family", "blur_sigma_max", "d_min", "blur_sigma_min", "noise_sigma")

#: Fields of ``process`` records (checkpoints, exports) under their names in earlier versions.
_OLD_FIELD_NAMES = {"steps": "num_timesteps"}


def current_record(record: dict[str, Any]) -> dict[str, Any]:
    """A saved ``process`` record with every field under its name now (N was ``steps`` in the
    records of blurdiff 0.1), in the same order: what readers of saved files compare and build."""
    return {_OLD_FIELD_NAMES.get(k, k): v for k, v in record.items()}


class BlurDiffusion:
    """Blur diffusion in the eigenbasis of a Gaussian blur (or DCT, or identity = DDPM); ``t`` is
    always an int64 tensor ``[B]`` of steps in ``1 … N``."""

    def __init__(self, config: ProcessConfig = ProcessConfig(), backend: str = "auto"):
        if not isinstance(config, ProcessConfig):
            raise TypeError(f"BlurDiffusion takes a ProcessConfig, got {type(config).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        H, W = config.resolution
        # The tables below peak at about 17 float64 arrays [N+1, H, W] (13 kept, temporaries while
        # building them, and the float32 copies of tables()); measured: 16.7 at 160 x 160, N = 1000.
        check_tables_fit(17, config.num_timesteps, H, W)
        self.config = config
        self.family = family = config.family
        self.resolution = (H, W)
        self.num_timesteps = N = config.num_timesteps
        self.backend = backend

        b = make_basis(config.basis, H, W, config.sigma, config.eig_floor)
        D = b.D if config.direction == "coarse_to_fine" else (1 - b.D).clamp_min(config.eig_floor)
        self.D = D
        if family == "lee":
            self.f = blur_f(config.blur_schedule, N, config.f_max)
            self.betas = noise_betas(config.noise_schedule, N)
            # log A_i = log α_i + 2 f(i) log D; A_0 = Ā_0 = 1 (step 0 is the data itself).
            log_A = torch.log1p(-self.betas)[:, None, None] + 2 * self.f[:, None, None] * torch.log(D)
            log_A[0] = 0.0
            log_A_bar = torch.cumsum(log_A, dim=0)
            #: √(a² + s²) per step and frequency, the std of x̄_t for unit-power data (None: 1, the
            #: paper's process is variance-preserving).
            self.scale = None
        else:
            self.f = self.betas = None  # the paper's schedules; this family has its own
            if family == "hoogeboom":
                log_a, s = hoogeboom_tables(H, W, N, config.blur_sigma_max, config.d_min)
            else:
                log_a, s = rissanen_tables(H, W, N, config.blur_sigma_min, config.blur_sigma_max, config.noise_sigma)
            # x̄_t / √(a² + s²) is variance-preserving with Ā = a²/(a² + s²) (log space: a may underflow).
            log_norm = torch.logaddexp(2 * log_a, 2 * torch.log(s))
            log_A_bar = 2 * log_a - log_norm
            log_A = torch.zeros_like(log_A_bar)
            # Ā never rises (a family's log-SNR is non-increasing); where it stays (rissanen's mean
            # colour, never destroyed) the step is 1 exactly, not a rounding above it.
            log_A[1:] = (log_A_bar[1:] - log_A_bar[:-1]).clamp(max=0.0)
            self.scale = (0.5 * log_norm).exp()
        # Kept in float64 for the samplers, which build their step tables from them (blurdiff.samplers).
        A, A_bar = log_A.exp(), log_A_bar.exp()
        one_minus_A, one_minus_A_bar = -torch.expm1(log_A), -torch.expm1(log_A_bar)
        self.log_A, self.log_A_bar = log_A, log_A_bar
        self.A, self.A_bar = A, A_bar
        self.one_minus_A, self.one_minus_A_bar = one_minus_A, one_minus_A_bar
        q_coefs = torch.stack([A_bar.sqrt(), one_minus_A_bar.sqrt()] if family == "lee" else [log_a.exp(), s])

        # x̂_0 ≈ U (x̄_t - √(1-Ā) ε̄) / √Ā (regularised, X0_REG), for pictures of what the model believes.
        x0_gain = A_bar.sqrt() / (A_bar + X0_REG * one_minus_A_bar)
        x0_coefs = torch.stack([self.unscaled(x0_gain), -x0_gain * one_minus_A_bar.sqrt()])

        self._tables = TableCache({"U_h": b.U_h, "U_w": b.U_w, "q_coefs": q_coefs, "x0_coefs": x0_coefs})
        self._data_stats = None
        #: What is built on the data statistics (the samplers of ``make_sampler``, a cycle the garbage
        #: collector frees with the process, and :meth:`reference_eps`'s tables), emptied when they change.
        self.data_stats_cache: dict = {}

    # ---------------------------------------------------------------- data statistics
    @property
    def data_stats(self):
        """The training data's :class:`blurdiff.statistics.DataStatistics` (None when unknown): the
        Gaussian reference of the ``ancestral``/``ddim`` samplers and the divergence guard's scale."""
        return self._data_stats

    @data_stats.setter
    def data_stats(self, stats) -> None:
        if stats is not None and tuple(stats.spectral_power.shape) != self.resolution:
            raise ValueError(
                f"data statistics of {tuple(stats.spectral_power.shape)} frequencies do not fit "
                f"this process's resolution {self.resolution}"
            )
        self._data_stats = stats
        self.data_stats_cache.clear()  # built on the old statistics

    def reference_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact ε-prediction for Gaussian data with the training data's power per frequency
        (:meth:`reference_eps_coef`): one ``spectral_lincomb``. What a network with the
        ``eps_residual`` output (:class:`ReferenceResidual`) adds its output to."""
        if self.data_stats is None:
            raise ValueError("reference_eps needs the data statistics (process.data_stats)")
        if "reference_eps" not in self.data_stats_cache:
            coef = self.reference_eps_coef(self.data_stats.reference_var)
            self.data_stats_cache["reference_eps"] = TableCache({"coefs": coef[None]})
        return self.lincomb([x_t], t, self.data_stats_cache["reference_eps"].on(x_t.device, x_t.dtype)["coefs"])

    # ---------------------------------------------------------------- the general process
    @property
    def signal_scale(self) -> torch.Tensor:
        """``a_t`` ``[N+1, H, W]`` float64: ``x̄_t = a_t ⊙ x̄_0 + s_t ⊙ ε̄`` (``√Ā`` for the paper's process)."""
        return self._tables.float64["q_coefs"][0]

    @property
    def noise_std(self) -> torch.Tensor:
        """``s_t`` ``[N+1, H, W]`` float64 (``√(1-Ā)`` for the paper's process)."""
        return self._tables.float64["q_coefs"][1]

    def unscaled(self, table: torch.Tensor) -> torch.Tensor:
        """A per-step table of coefficients on the variance-preserving ``x̄_t/√(a_t² + s_t²)`` as
        coefficients on ``x̄_t`` itself (divided by ``scale``; the table itself for the paper's process)."""
        return table if self.scale is None else table / self.scale

    def reference_eps_coef(self, v: torch.Tensor) -> torch.Tensor:
        """``ε̄_ref = e_t ⊙ x̄_t``, the exact ε of Gaussian data of power ``v`` per frequency:
        ``e = s/(a² v + s²)``, written ``√(1-Ā)/(Ā v + 1 - Ā)/scale``; float64 ``[N+1, H, W]``."""
        return self.unscaled(self.one_minus_A_bar.sqrt() / (self.A_bar * v + self.one_minus_A_bar))

    def prior_std(self, v: torch.Tensor | None) -> torch.Tensor:
        """The std per frequency of ``x̄_N`` that sampling starts from (float64 ``[H, W]``): the paper's
        ``√(1-Ā_N)``; for the other families the Gaussian that data of power ``v`` implies,
        ``√(a_N² v + s_N²)`` (rissanen never destroys the mean colour, so its prior is not data-free)."""
        N = self.num_timesteps
        if self.family == "lee":
            return self.one_minus_A_bar[N].sqrt()
        return self.scale[N] * (self.A_bar[N] * v + self.one_minus_A_bar[N]).sqrt()

    def prior_reference(self) -> torch.Tensor | None:
        """The data's power that :meth:`prior_std` needs: the data statistics' (a flat spectrum with a
        warning where there are none); None for the paper's process, whose prior needs none."""
        if self.family == "lee":
            return None
        return self._data_power(f"the {self.family} family's prior (the Gaussian of the data's power)")

    def _data_power(self, user: str) -> torch.Tensor:
        """The data statistics' power per frequency (float64 ``[H, W]``) for ``user`` (the warning's
        subject), else a flat spectrum with a warning: stable but less accurate."""
        if self.data_stats is not None:
            return self.data_stats.reference_var
        warn_at_caller(
            f"{user} has no data statistics (a checkpoint from an older version, or a process without "
            f"data_stats): using a flat spectrum (1 at every frequency), which is stable but less accurate. "
            f"Set process.data_stats = blurdiff.statistics.estimate_data_statistics(process, batches) to fix this"
        )
        return torch.ones(self.resolution, dtype=torch.float64)

    # ---------------------------------------------------------------- tables and backends
    def tables(self, device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The process tables (``U_h``, ``U_w``, ``q_coefs``, ``x0_coefs``) on ``device`` in the table
        dtype for data of ``dtype`` (the reverse step's are the ``ddpm`` sampler's)."""
        return self._tables.on(device, dtype)

    def ops(self, device: torch.device):
        """The op set for ``device``: the compiled ops (``fused``/``auto``) or the reference."""
        if self.backend == "reference":
            return blurdiff_ops.reference
        if self.backend == "fused" and not blurdiff_ops.kernels_available(device.type):
            raise RuntimeError(
                f"backend='fused' needs the compiled blurdiff_ops kernels for {device.type}, "
                f"which are not available: {blurdiff_ops.unavailable_reason(device.type)}"
            )
        return blurdiff_ops

    def _check(self, t: torch.Tensor, x: torch.Tensor, x_name: str = "x", **like: torch.Tensor | None) -> None:
        """``t`` ``[B]`` and ``x`` ``[B, C, H, W]`` fit this process; each of ``like`` is None or has ``x``'s shape."""
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (x.shape[0],):
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be an int64 tensor of shape [B={x.shape[0]}], got {got}")
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.resolution:
            raise ValueError(
                f"images must be [B, C, {self.resolution[0]}, {self.resolution[1]}] for this "
                f"process, got {tuple(x.shape)}"
            )
        if t.is_meta and not x.is_meta:
            raise ValueError(f"t is on the meta device (no values) but the images are on {x.device}")
        # Meta tensors have shapes but no values: there is no range to check.
        if t.numel() and not t.is_meta:
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 1 or hi > self.num_timesteps:
                raise ValueError(f"t must lie in 1 … {self.num_timesteps}, got values in [{lo}, {hi}]")
        for name, value in like.items():
            if value is not None and (not isinstance(value, torch.Tensor) or value.shape != x.shape):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name} must have the shape of {x_name} {tuple(x.shape)}, got {got}")

    def lincomb(
        self,
        inputs: list[torch.Tensor],
        t: torch.Tensor,
        coefs: torch.Tensor,
        noise_coef: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``blurdiff_ops.spectral_lincomb`` in this process's basis with its backend (``t``: rows
        of the tables ``coefs`` ``[K, T, H, W]`` and ``noise_coef`` ``[T, H, W]``, moved to the
        device of ``inputs``)."""
        x = inputs[0]
        tab = self.tables(x.device, x.dtype)
        return self.ops(x.device).spectral_lincomb(
            inputs, coefs, t.to(x.device), tab["U_h"], tab["U_w"], noise_coef, noise, generator
        )

    # ---------------------------------------------------------------- the process
    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_t = U √Ā_t U^T x_0 + U √(1-Ā_t) U^T ε`` (Eq. 4); ε drawn when not given."""
        self._check(t, x0, "x0", noise=noise)
        return self._q_sample(x0, t, noise, generator)

    def _q_sample(self, x0, t, noise=None, generator=None):
        q_coefs = self.tables(x0.device, x0.dtype)["q_coefs"]
        if noise is not None:
            return self.lincomb([x0, noise], t, q_coefs)
        # Fresh noise is drawn in the spectral domain by the op: the same law, one transform less.
        return self.lincomb([x0], t, q_coefs[0:1], q_coefs[1], generator=generator)

    def reverse_step(
        self,
        x_t: torch.Tensor,
        eps_pred: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One step ``x_t → x_{t-1}`` of Eq. 12; ``noise`` is pixel-space ``z`` (drawn when not
        given). The ``ddpm`` sampler's step (:meth:`blurdiff.samplers.Sampler.step`), whose
        positions are the steps themselves."""
        self._check(t, x_t, "x_t", eps_pred=eps_pred, noise=noise)
        return make_sampler(self, None, "ddpm").step(x_t, eps_pred, t, noise, generator)

    def predict_x0(self, x_t: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoised estimate ``x̂_0 = U (x̄_t - √(1-Ā_t) ε̄) / √Ā_t``, regularised (``X0_REG``)
        where the signal-to-noise ratio is tiny, so it stays finite for every schedule."""
        self._check(t, x_t, "x_t", eps_pred=eps_pred)
        return self.lincomb([x_t, eps_pred], t, self.tables(x_t.device, x_t.dtype)["x0_coefs"])

    def prior_sample(
        self,
        shape,
        generator: torch.Generator | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
        reference_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_N = U (prior_std ⊙ z̄)`` (:meth:`prior_std`: ``√(1-Ā_N)`` for the paper's process; for
        the others the data's Gaussian, of power ``reference_var``, default :meth:`prior_reference`)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        t = torch.full((shape[0],), self.num_timesteps, dtype=torch.int64, device=device)
        self._check(t, z)
        if self.family == "lee":
            return self.lincomb([z], t, self.tables(z.device, z.dtype)["q_coefs"][1:2])
        v = self.prior_reference() if reference_var is None else reference_var
        std = TableCache({"std": self.prior_std(v)[None, None]}).on(z.device, z.dtype)["std"]
        return self.lincomb([z], torch.zeros_like(t), std)

    def training_loss(
        self,
        model: Callable,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. 10 with λ = 1: ``mean ‖ε_θ(x_t, t) - ε‖²``, ``t ~ Uniform{1 … N}``."""
        B = x0.shape[0]
        if B == 0:  # the mean of no values: a NaN loss
            raise ValueError("training_loss needs a batch of at least one image, got an empty one")
        if t is None:
            t = torch.randint(1, self.num_timesteps + 1, (B,), generator=generator, device=x0.device)
        else:
            self._check(t, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self._q_sample(x0, t, noise)
        eps_pred = model(x_t, t)
        return torch.nn.functional.mse_loss(eps_pred.float(), noise.float())

    def sample(
        self,
        model: Callable,
        shape,
        generator: torch.Generator | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        steps=None,
        sampler: str | None = None,
        guard: bool = True,
        spacing: str | None = None,
        amp: str = "none",
        compile: bool = False,
        cuda_graph: bool = False,
    ) -> torch.Tensor:
        """Sample from the prior down to ``x_0``: all N steps of Eq. 12 by default, or ``steps`` (a count
        K, placed by ``spacing``, or a list) with ``sampler`` (:func:`blurdiff.samplers.make_sampler`).
        ``callback(i, x_i, eps_pred)`` is called before each step (for trajectories). ``guard``
        warns when the result looks diverged (:class:`blurdiff.sample_guard.SamplesDivergedWarning`).
        ``amp`` and ``compile``: the network in a mixed precision and under ``torch.compile``
        (:func:`blurdiff.devices.sampling_network`, ``blurdiff sample --amp/--compile``);
        ``cuda_graph``: the step replayed as a CUDA graph (:meth:`blurdiff.samplers.Sampler.sample`)."""
        return make_sampler(self, steps, sampler, spacing).sample(
            sampling_network(model, amp, compile),
            shape,
            generator,
            device,
            dtype,
            progress,
            callback,
            guard,
            cuda_graph,
        )


#: What a network's output means: ``eps`` (the paper's ε_θ) or ``eps_residual`` (ε_θ = ε̄_ref + output).
MODEL_OUTPUTS = ("eps", "eps_residual")


class ReferenceResidual(torch.nn.Module):
    """``ε_θ(x_t, t) = ε̄_ref(x_t, t) + net(x_t, t)``: the network only learns what the data has
    beyond a Gaussian of its own spectrum (:meth:`BlurDiffusion.reference_eps`). At initialisation
    (the UNet's last layer is zero) every frequency, the mean brightness included, has the right gain
    (why: README, Table 1 in miniature). ``net`` keeps its own state dict; this adds no parameters.
    """

    def __init__(self, net: torch.nn.Module, process: BlurDiffusion):
        super().__init__()
        self.net = net
        self.__dict__["process"] = process  # not a submodule: no parameters, no state

    @property
    def config(self):
        return self.net.config

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x_t, t)
        device = x_t.device.type
        in_autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        with torch.autocast(device, enabled=False) if in_autocast else contextlib.nullcontext():
            ref = self.process.reference_eps(x_t, t)  # in the data's precision
        return ref + out.to(ref.dtype)


def eps_model(net: torch.nn.Module, process: BlurDiffusion, model_output: str) -> torch.nn.Module:
    """ε_θ(x_t, t) of a network whose output means ``model_output`` (:data:`MODEL_OUTPUTS`): the
    network itself (``eps``), or the network on the process's Gaussian reference (``eps_residual``,
    :class:`ReferenceResidual`). The one place where a network's output is given its meaning."""
    if model_output not in MODEL_OUTPUTS:
        raise ValueError(f"unknown model_output {model_output!r} (known: {MODEL_OUTPUTS})")
    return ReferenceResidual(net, process) if model_output == "eps_residual" else net
