"""The blur-diffusion process and one of its samplers as a diffusers scheduler (the optional extra
``pip install "blurdiff[diffusers]"``): timesteps in diffusers numbering ``t_d = s - 1``, the prior
from :meth:`BlurDiffusionScheduler.prior_sample`, no other scheduler's config (README "diffusers").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

try:
    from diffusers import ConfigMixin, SchedulerMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.utils import BaseOutput
except ImportError as e:  # the extra is optional; say how to get it
    raise ImportError(
        f'blurdiff\'s diffusers integration needs diffusers: pip install "blurdiff[diffusers]" '
        f"(diffusers >= 0.42 needs Python >= 3.11; on older Pythons the extra installs nothing). ({e})"
    ) from e

from blurdiff.diffusion import BlurDiffusion, ProcessConfig
from blurdiff.samplers import MULTISTEP, SAMPLERS, SPACINGS, Sampler, make_sampler
from blurdiff.statistics import DataStatistics

__all__ = [
    "BlurDiffusionScheduler",
    "BlurDiffusionSchedulerOutput",
    "data_stats_to_config",
    "to_diffusers_timestep",
    "to_project_step",
]

#: The scheduler config's name of a :class:`ProcessConfig` field where diffusers has its own (N).
_CONFIG_NAMES = {"num_timesteps": "num_train_timesteps"}
#: The config keys that fix the process (the paper's process's record): a config without all of
#: them is not a blur process's.
PROCESS_KEYS = tuple(_CONFIG_NAMES.get(name, name) for name in ProcessConfig().to_dict())


def process_config(config: Mapping[str, Any]) -> ProcessConfig:
    """The :class:`ProcessConfig` a scheduler config describes."""
    fields = dataclasses.fields(ProcessConfig)
    return ProcessConfig(**{f.name: config[_CONFIG_NAMES.get(f.name, f.name)] for f in fields})


def to_project_step(timestep):
    """The project step ``s = t_d + 1`` of a diffusers timestep ``t_d`` (int or tensor)."""
    return timestep + 1


def to_diffusers_timestep(step):
    """The diffusers timestep ``t_d = s - 1`` of a project step ``s`` (int or tensor)."""
    return step - 1


def data_stats_to_config(stats: DataStatistics | Mapping | None) -> dict[str, Any] | None:
    """Data statistics (a :class:`DataStatistics` or its plain-data form) as the JSON data of
    ``scheduler_config.json`` (:meth:`DataStatistics.to_json`)."""
    if stats is None or isinstance(stats, DataStatistics):
        return None if stats is None else stats.to_json()
    if not isinstance(stats, Mapping):
        raise ValueError(f"data_stats must be a DataStatistics, its plain-data form, or None; got {type(stats)}")
    try:
        power = torch.as_tensor(stats["spectral_power"], dtype=torch.float64)
        return DataStatistics(
            int(stats["count"]), list(stats["channel_mean"]), list(stats["channel_std"]), power
        ).to_json()
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"data_stats is malformed (needs count, channel_mean, channel_std, spectral_power): {e}"
        ) from e


@dataclass
class BlurDiffusionSchedulerOutput(BaseOutput):
    """``prev_sample``: ``x`` at the next kept step (lower t); ``pred_original_sample``: the
    process's (regularised) denoised estimate ``x̂_0`` at the current step."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class BlurDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """The blur-diffusion process (docs/design.md §1) and one of its samplers (§4), in diffusers' shape.

    The config holds the process's arguments (``num_train_timesteps`` is its ``num_timesteps``), the
    sampler (``sampler``, ``spacing``: None picks the project's defaults) and the training data's
    statistics (``data_stats``, the integrators' Gaussian reference): everything needed to rebuild
    the same process and sampler from ``scheduler_config.json``.
    """

    _compatibles: list[str] = []  # no isotropic scheduler runs this process
    order = 1
    #: Required by diffusers; meaningless here: the prior is U √(1-Ā_N) Uᵀ z (use prior_sample).
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        resolution: int | Sequence[int] = 64,
        basis: str = "gaussian",
        sigma: float = 0.4,
        blur_schedule: str = "quartic",
        f_max: float = 0.140625,
        noise_schedule: str = "linear",
        direction: str = "coarse_to_fine",
        eig_floor: float = 0.03,
        family: str = "lee",
        blur_sigma_max: float = 20.0,
        d_min: float = 0.001,
        blur_sigma_min: float = 0.5,
        noise_sigma: float = 0.01,
        sampler: str | None = None,
        spacing: str | None = None,
        data_stats: dict[str, Any] | DataStatistics | None = None,
        prediction_type: str = "epsilon",
    ):
        # Fail here, not at the first set_timesteps, for a config that can never sample.
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"sampler must be None or one of {SAMPLERS}, got {sampler!r}")
        if spacing is not None and spacing not in SPACINGS:
            raise ValueError(f"spacing must be None or one of {SPACINGS}, got {spacing!r}")
        if prediction_type != "epsilon":
            raise ValueError(
                f"prediction_type must be 'epsilon' (the process's network predicts ε), got {prediction_type!r}"
            )
        self.process = BlurDiffusion(process_config(self.config))  # register_to_config has filled it
        stats = data_stats_to_config(data_stats)
        try:
            self.process.data_stats = DataStatistics.from_state(stats, self.process.resolution)
        except ValueError as e:
            raise ValueError(f"data_stats does not fit this process: {e}") from e
        # JSON has no tuples and no DataStatistics: store what loads back equal. Every value is
        # explicit, so none is to be replaced by a default when this config is read again.
        self.register_to_config(resolution=list(self.process.resolution), data_stats=stats, _use_default_values=[])
        self.sampler: Sampler | None = None
        self.num_inference_steps: int | None = None
        # diffusers' convention before set_timesteps: every training timestep, descending.
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._prev: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (position, x, ε) of the last step

    @classmethod
    def from_process(
        cls, process: BlurDiffusion, sampler: str | None = None, spacing: str | None = None
    ) -> BlurDiffusionScheduler:
        """The scheduler of ``process`` (its arguments and data statistics; a new process object
        built from them, so the config is the only state)."""
        cfg = {_CONFIG_NAMES.get(k, k): v for k, v in dataclasses.asdict(process.config).items()}
        return cls(**cfg, sampler=sampler, spacing=spacing, data_stats=process.data_stats)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``, but refusing the config of another scheduler: it cannot
        describe a blur process, and defaults filled in for the missing keys would sample a
        different one without a word."""
        if isinstance(config, Mapping):
            name = config.get("_class_name", cls.__name__)
            missing = [k for k in PROCESS_KEYS if k not in config and k not in kwargs]
            if name != cls.__name__ or missing:
                what = f"a {name} config" if name != cls.__name__ else "a config without the blur process's keys"
                raise ValueError(
                    f"{cls.__name__}.from_config got {what} (missing: {missing}): it does not describe a "
                    f"blur process. Build the scheduler from the process's arguments ({cls.__name__}(...) "
                    f"or {cls.__name__}.from_process(process)) instead"
                )
            # blurdiff 0.1 saved the sampler as sampler_kind, which diffusers would drop unread.
            config = {("sampler" if k == "sampler_kind" else k): v for k, v in config.items()}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ sampling schedule
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Pick the K kept steps and build the sampler: ``num_inference_steps`` K (None: all N),
        placed by the config's ``spacing``, or ``timesteps`` given in diffusers numbering (they must
        include N-1, the prior). Sets ``self.timesteps`` (diffusers numbering, descending) and drops
        the multistep history."""
        N = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("give num_inference_steps or timesteps, not both")
        K = num_inference_steps
        if K is not None and (isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= N):
            raise ValueError(f"num_inference_steps must lie in 1 … {N} (num_train_timesteps) as an integer, got {K!r}")
        steps = self._project_steps(timesteps) if timesteps is not None else K
        self.sampler = make_sampler(self.process, steps, self.config.sampler, self.config.spacing)
        self.num_inference_steps = self.sampler.K
        self.timesteps = torch.tensor([to_diffusers_timestep(s) for s in self.sampler.timesteps], dtype=torch.int64)
        if device is not None:
            self.timesteps = self.timesteps.to(device)
        self._prev = None

    def _project_steps(self, timesteps) -> list[int]:
        N = self.config.num_train_timesteps
        values = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
        if not values or any(isinstance(t, bool) or int(t) != t for t in values):
            raise ValueError(f"timesteps must be a non-empty list of integers, got {values!r}")
        values = [int(t) for t in values]
        if len(set(values)) != len(values) or min(values) < 0 or max(values) != N - 1:
            raise ValueError(
                f"timesteps must be distinct, in 0 … {N - 1} (diffusers numbering) and include {N - 1} "
                f"(sampling starts from the prior), got {sorted(values, reverse=True)}"
            )
        return [to_project_step(t) for t in values]

    # ------------------------------------------------------------------ the process
    def prior_sample(
        self, shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``x_N``, where sampling starts (``BlurDiffusion.prior_sample``: ``U √(1-Ā_N) Uᵀ z`` for the
        paper's process, the data's Gaussian for the other families; not ``randn``: the prior is not
        isotropic)."""
        return self.process.prior_sample(shape, generator, device, dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The sample unchanged: the network sees ``x_t`` as the process makes it."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``x_t = U √Ā_t Uᵀ x_0 + U √(1-Ā_t) Uᵀ ε`` at diffusers timesteps ``t_d`` (int, or int
        tensor ``[B]`` or scalar): one fused ``process.q_sample`` at ``s = t_d + 1``."""
        x, N, B = original_samples, self.config.num_train_timesteps, original_samples.shape[0]
        if isinstance(timesteps, torch.Tensor):
            if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
                raise ValueError(f"timesteps must be integers (diffusers numbering 0 … {N - 1}), got {timesteps.dtype}")
            t = timesteps.to(device=x.device, dtype=torch.int64)
            t = t.expand(B) if t.dim() == 0 else t
            if t.shape != (B,):
                raise ValueError(f"timesteps must be a scalar or of shape [B={B}], got {tuple(timesteps.shape)}")
        elif isinstance(timesteps, int) and not isinstance(timesteps, bool):
            t = torch.full((B,), timesteps, dtype=torch.int64, device=x.device)
        else:
            raise ValueError(f"timesteps must be an int or an integer tensor, got {type(timesteps).__name__}")
        if t.numel():
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi > N - 1:
                raise ValueError(
                    f"timesteps must lie in 0 … {N - 1} (diffusers numbering, project step = t + 1), "
                    f"got values in [{lo}, {hi}]"
                )
        return self.process.q_sample(x, to_project_step(t), noise)

    # ------------------------------------------------------------------ one step
    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        noise: torch.Tensor | None = None,
    ) -> BlurDiffusionSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One step of the sampler from ``timestep`` (diffusers numbering, one of ``self.timesteps``)
        to the next kept one. ``model_output`` is ε_θ(x_t, t); ``noise`` is pixel-space ``z``
        (drawn from ``generator`` in the spectral domain when not given, as ``Sampler.sample``
        draws it, so the same generator gives the same samples). The multistep kinds need the
        steps in order, from the first."""
        if self.sampler is None:
            raise ValueError("call set_timesteps before step: the sampler is chosen there")
        t_d = self._scalar_timestep(timestep)
        s = to_project_step(t_d)
        if s not in self.sampler.timesteps:
            raise ValueError(
                f"timestep {t_d} is not in this schedule (diffusers numbering; the {self.sampler.K} kept "
                f"timesteps are {self.timesteps.tolist()[:8]}{' …' if self.sampler.K > 8 else ''})"
            )
        k = self.sampler.position(s)
        eps = model_output.to(sample.dtype)
        prev = None
        if self.sampler.name in MULTISTEP and k < self.sampler.K:
            if self._prev is None or self._prev[0] != k + 1:
                raise ValueError(
                    f"the {self.sampler.name} sampler is multistep: step timestep {t_d} right after "
                    f"timestep {to_diffusers_timestep(self.sampler.timesteps[self.sampler.K - k - 1])} "
                    f"(the steps of self.timesteps in order, from the first)"
                )
            prev = self._prev[1:]
        t = torch.full((sample.shape[0],), s, dtype=torch.int64, device=sample.device)
        x0 = self.process.predict_x0(sample, eps, t)  # also checks the shapes
        prev_sample = self.sampler.step(sample, eps, k, noise, generator, prev)
        self._prev = (k, sample, eps)
        if not return_dict:
            return (prev_sample, x0)
        return BlurDiffusionSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    @staticmethod
    def _scalar_timestep(timestep) -> int:
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() == 0 or timestep.is_floating_point() or (timestep != timestep.flatten()[0]).any():
                raise ValueError(f"timestep must be one integer (or a tensor of one repeated integer), got {timestep}")
            return int(timestep.flatten()[0])
        if isinstance(timestep, int) and not isinstance(timestep, bool):
            return timestep
        raise ValueError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
