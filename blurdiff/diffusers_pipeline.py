"""Blur-diffusion sampling as a diffusers pipeline (the optional extra ``pip install "blurdiff[diffusers]"``;
README "diffusers"): a network (a diffusers model that takes diffusers timesteps, or the project's
UNet in :class:`BlurDiffusionUNet`) and a :class:`blurdiff.diffusers_scheduler.BlurDiffusionScheduler`,
sampling as ``Sampler.sample`` does, bit for bit with the same generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# First: without diffusers, this import raises the ImportError that says how to install the extra.
from blurdiff.diffusers_scheduler import BlurDiffusionScheduler, to_project_step  # isort: skip
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, ModelMixin  # isort: skip
from diffusers.configuration_utils import register_to_config  # isort: skip
from diffusers.utils import BaseOutput, is_accelerate_available  # isort: skip
from diffusers.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME  # isort: skip

from blurdiff.checkpoint import build_from_checkpoint, load_checkpoint, load_safetensors, resolve_checkpoint
from blurdiff.diffusion import MODEL_OUTPUTS, eps_model
from blurdiff.safe_json import loads as json_loads
from blurdiff.sample_guard import SampleStats, warn_if_diverged
from blurdiff.unet import UNet, UNetConfig, check_weights

__all__ = ["BlurDiffusionPipeline", "BlurDiffusionUNet", "BlurDiffusionUNetOutput", "own_storage"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def own_storage(module: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and buffer of ``module`` storage of its own, in place.

    Weights loaded from safetensors can be views into the file's buffer, at addresses the CPU's
    BLAS does not take its usual code path for: a ``Linear`` with the very same weights then
    rounds differently (measured: 3e-7 on 3 sampling steps of a small UNet2DModel), and a reloaded pipeline
    would not reproduce the saved one's samples bit for bit. A copy costs one pass over the
    weights at load time and lets the file go."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = tensor.data.clone()
    return module


@dataclass
class BlurDiffusionUNetOutput(BaseOutput):
    """``sample``: ε_θ(x_t, t), with the Gaussian reference added for ``eps_residual`` networks."""

    sample: torch.Tensor


class BlurDiffusionUNet(ModelMixin, ConfigMixin):
    """The project's ADM UNet (:class:`blurdiff.unet.UNet`) as a diffusers model.

    The config is the :class:`blurdiff.unet.UNetConfig` fields plus ``model_output`` (``eps`` or
    ``eps_residual``, :data:`blurdiff.diffusion.MODEL_OUTPUTS`); the weights are the UNet's own
    state dict under ``net.``, saved as safetensors by ``ModelMixin.save_pretrained``.

    The process is an argument of ``forward``, not part of this model: an ``eps_residual`` network
    adds ε̄_ref (:meth:`blurdiff.diffusion.BlurDiffusion.reference_eps`), which depends on the process
    and the data's statistics that the scheduler's config already holds. One copy there keeps the
    saved model weights and architecture only, and the two can never disagree; without the process,
    an ``eps_residual`` model is a ValueError rather than a silently wrong ε.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        model_channels: int = 128,
        num_res_blocks: int = 3,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 3, 4),
        attention_ds: tuple[int, ...] | list[int] = (4, 8),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        use_checkpoint: bool = False,
        model_output: str = "eps",
    ):
        super().__init__()
        if model_output not in MODEL_OUTPUTS:
            raise ValueError(f"model_output must be one of {MODEL_OUTPUTS}, got {model_output!r}")
        # register_to_config has filled self.config with the arguments
        unet_config = UNetConfig(**{f.name: self.config[f.name] for f in dataclasses.fields(UNetConfig)})
        # JSON has no tuples: store what loads back equal.
        self.register_to_config(
            channel_mult=list(unet_config.channel_mult),
            attention_ds=list(unet_config.attention_ds),
            _use_default_values=[],
        )
        self.net = UNet(unet_config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``ModelMixin.from_pretrained``, with the weights copied out of the file's buffer
        (:func:`own_storage`), so the model computes exactly what the saved one did.

        A local folder's weights are checked first, as ``blurdiff sample --export`` checks an
        export's (:func:`blurdiff.unet.check_weights`: names, shapes, floating point, finite, on the
        meta device): diffusers itself only logs missing tensors and loads any dtype and NaN."""
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if folder.is_dir():
            _check_pretrained_weights(folder, kwargs.get("variant"))
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())  # as BlurDiffusionPipeline.from_pretrained
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        own_storage(loaded[0] if isinstance(loaded, tuple) else loaded)  # (model, loading info) on request
        return loaded

    @classmethod
    def from_unet(cls, net: UNet, model_output: str = "eps") -> BlurDiffusionUNet:
        """A wrapper around a copy of ``net``'s weights (same config, same values, same dtype and device)."""
        model = cls(**dataclasses.asdict(net.config), model_output=model_output)
        model.net.load_state_dict(net.state_dict())
        param = next(net.parameters(), None)
        if param is not None:
            model.net.to(device=param.device, dtype=param.dtype)
        return model.train(net.training)

    def forward(
        self, sample: torch.Tensor, timestep, process=None, return_dict: bool = True
    ) -> BlurDiffusionUNetOutput | tuple[torch.Tensor]:
        """ε_θ at the diffusers timestep ``timestep`` (int, or int tensor scalar or ``[B]``);
        ``process`` (the scheduler's) is needed for an ``eps_residual`` network."""
        B = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"timestep must be integers (diffusers numbering), got {t.dtype}")
        s = to_project_step(t.to(torch.int64).expand(B) if t.dim() == 0 else t.to(torch.int64))
        if self.config.model_output == "eps_residual" and process is None:
            raise ValueError(
                "this network's output is a residual on the Gaussian reference (model_output="
                "'eps_residual'): pass process=scheduler.process to add it"
            )
        eps = eps_model(self.net, process, self.config.model_output)(sample, s)
        return BlurDiffusionUNetOutput(sample=eps) if return_dict else (eps,)


def _check_pretrained_weights(folder: Path, variant: str | None) -> None:
    """ValueError naming the file when ``folder``'s weights are not a state dict of the network its
    ``config.json`` describes. A folder without safetensors weights is left to diffusers' own errors."""
    name = SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors" if variant else ".safetensors")
    weights_path, config_path = folder / name, folder / CONFIG_NAME
    if not weights_path.is_file() or not config_path.is_file():
        return
    try:
        config = json_loads(config_path.read_text())
    except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a JSON object")
    weights = load_safetensors(weights_path)
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    # ModelMixin keeps the UNet's state dict under "net."; anything else is unexpected.
    own = {k.removeprefix("net."): t for k, t in weights.items()}
    check_weights({k: v for k, v in config.items() if k in fields}, own, weights_path)


class BlurDiffusionPipeline(DiffusionPipeline):
    """Unconditional image generation with blur diffusion.

    ``unet``: :class:`BlurDiffusionUNet` (the project's network) or any diffusers model called as
    ``unet(x_t, t_d).sample`` with diffusers timesteps (e.g. ``UNet2DModel``); ``scheduler``:
    :class:`blurdiff.diffusers_scheduler.BlurDiffusionScheduler`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler: BlurDiffusionScheduler):
        super().__init__()
        if not isinstance(scheduler, BlurDiffusionScheduler):
            raise ValueError(
                f"BlurDiffusionPipeline needs a BlurDiffusionScheduler (the blur process), "
                f"got {type(scheduler).__name__}"
            )
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained``, with every network's weights copied out of the
        file's buffer (:func:`own_storage`): the reloaded pipeline gives the saved one's samples
        bit for bit, a diffusers ``UNet2DModel`` included."""
        # diffusers asks for low_cpu_mem_usage by default and, without the accelerate package,
        # prints five lines of advice to install it on every load; these networks are small, so
        # ask for it only where accelerate is there to give it.
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for name in pipe.components:
            component = getattr(pipe, name)
            if isinstance(component, torch.nn.Module):
                own_storage(component)
        return pipe

    @classmethod
    def from_checkpoint(
        cls, path_or_state: str | Path | dict[str, Any], use_ema: bool = True, device="cpu"
    ) -> BlurDiffusionPipeline:
        """The pipeline of a project training checkpoint: a file, a run folder (its newest
        checkpoint) or a loaded state; EMA weights by default, the run's data statistics in the
        scheduler. Built the way :func:`blurdiff.checkpoint.build_from_checkpoint` builds the
        process and network, so it samples what ``blurdiff sample`` samples."""
        if isinstance(path_or_state, dict):
            state, source = path_or_state, "the checkpoint"
        else:
            path = Path(path_or_state)
            path = resolve_checkpoint(run_dir=path) if path.is_dir() else path
            state, source = load_checkpoint(path), str(path)
        process, model = build_from_checkpoint(state, use_ema=use_ema, device=device, source=source)
        output = state["config"].get("model_output", "eps")
        unet = BlurDiffusionUNet.from_unet(model.net if output == "eps_residual" else model, model_output=output)
        return cls(unet=unet.eval(), scheduler=BlurDiffusionScheduler.from_process(process))

    def _eps(self, x: torch.Tensor, t_d: torch.Tensor) -> torch.Tensor:
        t = t_d.to(x.device).expand(x.shape[0])
        if isinstance(self.unet, BlurDiffusionUNet):
            return self.unet(x, t, process=self.scheduler.process).sample
        out = self.unet(x, t)
        return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """``batch_size`` images with ``num_inference_steps`` of the scheduler's sampler (None: all
        N steps, the paper's Eq. 12 unless the scheduler's config names another kind). Warns
        (:class:`blurdiff.sample_guard.SamplesDivergedWarning`) when the raw samples look diverged.

        ``output_type``: ``pil``, ``np`` (``[B, H, W, C]`` in [0, 1]), ``pt`` (``[B, C, H, W]`` in
        [0, 1]) or ``latent`` (the raw ``x_0`` in the data's [-1, 1] scale, not clamped).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(generator, list):
            raise ValueError("give one torch.Generator: the sampler draws the whole batch's noise from it")
        H, W = self.scheduler.process.resolution
        channels = self.unet.config.in_channels
        device = self._execution_device
        dtype = self.unet.dtype

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = self.scheduler.prior_sample((batch_size, channels, H, W), generator, device, dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = self._eps(x, t)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        # The guard of every sampler of the project: a warning when the raw values look diverged.
        stats = self.scheduler.process.data_stats
        warn_if_diverged(SampleStats.of(x), stats.std if stats is not None else None, f"{self.scheduler.sampler!r}")

        if output_type == "latent":
            image = x
        else:
            image = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                image = image.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
