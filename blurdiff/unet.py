"""The ADM UNet (Dhariwal & Nichol, 2021) that predicts the noise ``eps`` in blur diffusion.

``UNetModel`` of openai/guided-diffusion, restricted to what the paper uses (2-D images, no
class conditioning), with its module names, so a guided-diffusion model with the same settings has
the same state-dict keys and shapes.

Shape of the network, top to bottom::

    t --sinusoid--> MLP --> emb  (fed to every ResBlock)
    x --conv--> [ResBlock (+Attention)] x num_res_blocks, Downsample   per level  --> skips
            --> ResBlock, Attention, ResBlock                          (middle)
            --> [concat skip, ResBlock (+Attention)] x (num_res_blocks+1), Upsample per level
            --> GroupNorm, SiLU, zero conv --> eps_pred
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blurdiff.devices import check_fits

__all__ = [
    "UNetConfig",
    "UNet",
    "UNET_PRESETS",
    "build_unet",
    "check_fits_memory",
    "check_weights",
    "timestep_embedding",
]


# --------------------------------------------------------------------------- Configuration

GROUPS = 32  # GroupNorm groups, fixed as in guided-diffusion


def _head_count(channels: int, config: UNetConfig) -> int:
    """Heads for an attention layer of this width: fixed count, or fixed width per head."""
    if config.num_head_channels > 0:
        if channels % config.num_head_channels:
            raise ValueError(
                f"UNetConfig.num_head_channels={config.num_head_channels} does not divide "
                f"the attention width {channels}"
            )
        return channels // config.num_head_channels
    if config.num_heads < 1 or channels % config.num_heads:
        raise ValueError(f"UNetConfig.num_heads={config.num_heads} does not divide the attention width {channels}")
    return config.num_heads


@dataclass
class UNetConfig:
    """Everything needed to rebuild a UNet; ``dataclasses.asdict`` of it goes in checkpoints.

    ``attention_ds`` lists *downsample rates* (1 = full resolution, 2 = half, ...), not pixel
    sizes: guided-diffusion's ``attention_resolutions="16,8"`` at 64x64 is ``attention_ds=(4, 8)``.
    ``image_size`` is the resolution the preset is meant for (trainers and samplers read it); the
    network accepts any ``H, W`` divisible by ``size_multiple``.
    """

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    attention_ds: tuple[int, ...] = (4, 8)
    num_heads: int = 4
    num_head_channels: int = -1  # > 0: fixed width per head, overrides num_heads
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False  # BigGAN-style resampling inside ResBlocks (off in the paper)
    conv_resample: bool = True  # learned conv in Downsample/Upsample
    use_checkpoint: bool = False  # gradient checkpointing: less memory, one extra forward

    def __post_init__(self):
        # Configs come back from JSON / YAML with lists; keep them hashable and comparable.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_ds = tuple(int(d) for d in self.attention_ds)

        for name in ("image_size", "in_channels", "out_channels", "model_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"UNetConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_res_blocks < 1:
            raise ValueError(f"UNetConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(f"UNetConfig.channel_mult must be non-empty and positive, got {self.channel_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")

        # GroupNorm(32) needs every width (and every skip concatenation) divisible by 32.
        for mult in self.channel_mult:
            width = self.model_channels * mult
            if width % GROUPS != 0:
                raise ValueError(
                    f"UNetConfig: model_channels * channel_mult = {self.model_channels} * {mult} "
                    f"= {width} is not divisible by {GROUPS} (GroupNorm groups)"
                )

        valid_ds = [2**level for level in range(len(self.channel_mult))]
        for ds in self.attention_ds:
            if ds not in valid_ds:
                raise ValueError(
                    f"UNetConfig.attention_ds entry {ds} is not a downsample rate of this "
                    f"network; valid rates are {valid_ds}"
                )

        # Fail at build time, not at the first forward, if heads do not divide a width.
        for ds in (*self.attention_ds, valid_ds[-1]):  # the middle block always attends
            _head_count(self.model_channels * self.channel_mult[valid_ds.index(ds)], self)

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one halving per level transition)."""
        return 2 ** (self.levels - 1)


# The paper's model (docs/design.md §3): 121.06 M parameters.
# "tiny" is for CPU smoke runs and (widened, see presets.py) the "toy" experiment, at 16x16 or 32x32.
UNET_PRESETS: dict[str, UNetConfig] = {
    "adm-lsun64": UNetConfig(),
    "tiny": UNetConfig(
        image_size=32,
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2, 2),
        attention_ds=(4,),  # 8x8 at 32x32, 4x4 at 16x16
        num_heads=2,
    ),
}


def build_unet(preset: str, **overrides) -> UNet:
    """Build a UNet from a named preset, with any ``UNetConfig`` field overridden.

    >>> model = build_unet("tiny", dropout=0.1)
    >>> eps = model(x_t, t)          # x_t [B, 3, H, W], t int64 [B]
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; valid presets: {sorted(UNET_PRESETS)}")
    fields = [f.name for f in dataclasses.fields(UNetConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown UNet override(s) {unknown}; valid names: {fields}")
    config = dataclasses.replace(UNET_PRESETS[preset], **overrides)
    check_fits_memory(config)
    return UNet(config)


def check_fits_memory(config: UNetConfig, device: torch.device | str = "cpu") -> None:
    """A ValueError, before anything is allocated, for a network whose float32 weights alone exceed
    the memory of ``device`` (where it is built): counted on the meta device."""
    with torch.device("meta"):
        count = sum(p.numel() for p in UNet(config).parameters())
    sizes = f"model_channels={config.model_channels}, channel_mult={list(config.channel_mult)}"
    check_fits(
        torch.device(device), 4 * count, f"a UNet of {sizes} ({count:,} parameters)", "a smaller unet.model_channels"
    )


def check_weights(config, weights, source, what: str = "weights") -> UNet:
    """The network ``config`` (the UNetConfig fields) describes, holding ``weights`` (assigned, not
    copied), which must be its state dict: the same names and shapes, floating point, finite; else a
    ValueError naming ``source`` (the file). For weights however they come in (a checkpoint, an
    export, a diffusers folder). Built on the meta device: a config asking for more than the weights
    hold is refused before anything of its size is allocated."""
    try:
        unet_config = UNetConfig(**config)
    except (TypeError, ValueError) as e:  # not a mapping, unknown or missing fields, bad values
        raise ValueError(f"{source}: its unet is not a UNetConfig: {e}") from e
    with torch.device("meta"):
        network = UNet(unet_config)
    expected = network.state_dict()
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise ValueError(f"{source}: the {what} are not a state dict of tensors")
    unfit = f"{source}: the {what} do not fit the network its config describes"
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        found = (("missing", missing), ("unexpected", unexpected))
        raise ValueError(
            f"{unfit}: " + ", ".join(f"{len(v)} {kind} (first {v[0]})" for kind, v in found if v) + " keys"
        )
    shapes = [k for k in expected if weights[k].shape != expected[k].shape]
    if shapes:
        k = shapes[0]
        raise ValueError(
            f"{unfit}: {len(shapes)} of {len(expected)} tensors have another shape (first {k}: "
            f"{list(weights[k].shape)}, the network's {list(expected[k].shape)})"
        )
    bad = [k for k, t in weights.items() if not t.is_floating_point()]
    if bad:
        counted = f"{len(bad)} of {len(weights)} tensors, first {bad[0]}: {weights[bad[0]].dtype}"
        raise ValueError(f"{source}: the {what} are not floating point ({counted})")
    bad = [k for k, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        counted = f"NaN or inf in {len(bad)} of {len(weights)} tensors, first {bad[0]}"
        raise ValueError(f"{source}: the {what} are not finite ({counted})")
    # A plain dict: load_state_dict(assign=True) marks the state dict's _metadata, and any later
    # load of it (the trainer's, into its real network) would then assign instead of copy.
    network.load_state_dict(dict(weights), assign=True)
    return network


# --------------------------------------------------------------------------- Building blocks


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoids ``[cos(t w_k), sin(t w_k)]`` with geometric frequencies.

    Computed in float32 whatever the autocast state: t goes up to 1000, and bf16 cannot even
    represent most integers that large.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32: mean/variance in bf16/fp16 lose too much precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding: ``forward(x, emb)``."""


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands ``emb`` to the children that want it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: stride-2 conv (learned) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then optionally a 3x3 conv to smooth the blocks."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(TimestepBlock):
    """Two 3x3 convs with the timestep injected between them, plus a skip path.

    With ``use_scale_shift_norm`` the embedding modulates the second GroupNorm as
    ``norm(h) * (1 + scale) + shift`` (FiLM); otherwise it is added before that norm.
    The last conv starts at zero, so a fresh block is the identity (or the 1x1 skip).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )

        # Resampling sits between the norm/activation and the conv, on both paths, so the
        # skip and residual branches stay the same size.  Parameter-free, as in BigGAN.
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )

        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = conv(self.h_upd(norm_act(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)

        emb_out = self.emb_layers(emb)[..., None, None].to(h.dtype)
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = out_rest(out_norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, as a residual block.

    The qkv projection lays channels out head by head (``[q, k, v]`` of head 0, then head 1,
    ...), the order guided-diffusion uses by default, so its weights would load unchanged.
    The output projection starts at zero: a fresh block is the identity.
    """

    def __init__(self, channels: int, num_heads: int, use_checkpoint: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))  # [B, 3C, T]
        # [B, heads, 3 * head_dim, T] -> q, k, v each [B, heads, T, head_dim] for SDPA
        qkv = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, -1).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return (x.reshape(b, c, -1) + self.proj_out(h)).reshape(b, c, *spatial)


# --------------------------------------------------------------------------- The network


class UNet(nn.Module):
    """ADM UNet: ``model(x, t) -> eps_pred`` with ``eps_pred.shape == x.shape``.

    ``x`` is ``[B, in_channels, H, W]`` with H, W multiples of ``config.size_multiple``;
    ``t`` is a ``[B]`` tensor of timesteps (int64 0..N; floats also work).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc

        def res_block(ch_in: int, ch_out: int, **updown) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                cfg.dropout,
                out_channels=ch_out,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                use_checkpoint=cfg.use_checkpoint,
                **updown,
            )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, _head_count(ch, cfg), use_checkpoint=cfg.use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # Encoder.  skip_chans records the width of every activation the decoder will
        # concatenate back, one per input block, in order.
        ch = first_ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != cfg.levels - 1:
                down = res_block(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        # Bottleneck: global attention at the coarsest scale, where it is cheapest.
        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), attention(ch), res_block(ch, ch))

        # Decoder: one more block per level than the encoder, so every skip is consumed
        # (the extra one takes the Downsample output / the stem conv).
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res_block(ch + skip_chans.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(attention(ch))
                if level and i == cfg.num_res_blocks:
                    up = res_block(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        assert not skip_chans and ch == first_ch

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"UNet: x must be a 4-D tensor [B, C, H, W], got {shape}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet: x has {x.shape[1]} channels, the model expects in_channels="
                f"{cfg.in_channels} (x shape {tuple(x.shape)})"
            )
        m = cfg.size_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(
                f"UNet: x spatial size {tuple(x.shape[2:])} must be divisible by {m} "
                f"(2 ** (levels - 1) for {cfg.levels} levels)"
            )
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"UNet: t must be a 1-D tensor of shape [B] = [{x.shape[0]}], got {shape}")
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"UNet: t must be an integer or float tensor, got {t.dtype}")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x, t)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        # Under autocast the last conv yields bf16/fp16; hand eps back in the caller's dtype
        # so the diffusion arithmetic that follows stays in full precision.
        return self.out(h).to(x.dtype)
