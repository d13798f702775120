"""Experiment presets: the paper's three rows of Table 1, and a toy that trains on a laptop CPU.

A preset fixes the process (a :class:`~blurdiff.diffusion.ProcessConfig`), the network (a ``build_unet`` preset
and overrides) and the optimisation defaults; command-line options override the latter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from blurdiff.diffusion import ProcessConfig
from blurdiff.schedules import PAPER_F_MAX

_LSUN64 = ProcessConfig(
    resolution=64, basis="gaussian", sigma=0.4, noise_schedule="linear", steps=1000, direction="coarse_to_fine"
)


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    process: ProcessConfig
    unet: str
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-5
    batch_size: int = 16
    ema_decay: float = 0.9999
    hflip: bool = True
    # Stability (not in the paper, which names none): a linear learning-rate warm-up and the
    # gradient clipped to this L2 norm. Measured on the toy preset (README, "Training that holds").
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    # "constant" (after the warm-up), or "cosine": down to 0 at --max-steps, so that the last weights
    # (and their EMA) are not caught mid-excursion (README, "Training that holds").
    lr_schedule: str = "constant"
    # What the network's output means (blurdiff.diffusion.MODEL_OUTPUTS): the paper's ε, or a residual
    # on the Gaussian reference's ε (ReferenceResidual), which data with a strong mean needs.
    model_output: str = "eps"


PRESETS: dict[str, ExperimentPreset] = {
    # Table 1: f(N) = 0.14 quartic (the paper's best), 0.6 log, and no blur (DDPM in the basis).
    "lsun64-quartic": ExperimentPreset(
        "lsun64-quartic", replace(_LSUN64, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2), "adm-lsun64"
    ),
    "lsun64-log": ExperimentPreset("lsun64-log", replace(_LSUN64, blur_schedule="log", f_max=0.6), "adm-lsun64"),
    "lsun64-noblur": ExperimentPreset("lsun64-noblur", replace(_LSUN64, blur_schedule="none", f_max=0.0), "adm-lsun64"),
    # Two CPU cores, minutes: 16x16, a widened tiny UNet, a faster learning rate, a shorter EMA
    # (tried on the toy data: 32x32 or 32 channels still gave saturated colour fields after 25 min).
    # lr 1e-3 without warm-up or clipping diverged after 2300 steps on two machines (README, "Samples you can trust").
    "toy": ExperimentPreset(
        "toy",
        replace(_LSUN64, resolution=16, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2),
        "tiny",
        unet_overrides=dict(model_channels=64, channel_mult=(1, 1, 2)),
        lr=5e-4,
        batch_size=16,
        ema_decay=0.999,
        warmup_steps=200,
        lr_schedule="cosine",
    ),
}

# Table 1 in miniature (scripts/table1.py): the three rows at 32x32 on `blurdiff data photos`, sized for
# two CPU cores. One network and one optimiser recipe for all three; only the process differs.
#
# The same physical blur at 32x32. A 32x32 image is the 64x64 scene sampled at half the rate, so the
# blur, measured in pixels, should halve: a Gaussian of std s pixels at 64x64 is one of s/2 pixels at
# 32x32. Halving the kernel's sigma does not do that here: sigma = 0.4 is far below a pixel, the
# discrete kernel is [0.044, 1, 0.044]/1.088, and at sigma = 0.2 it is the identity to within 2e-5 (no
# blur at all). What sets the blur is the cumulative exponent: after i steps the signal is multiplied by
# D^(f(1) + ... + f(i)), and with this kernel D(w) ~ exp(-0.081 w^2/2) at low frequencies w (radians
# per pixel), a Gaussian of variance 0.081 (f(1) + ... + f(i)) pixels^2. The same image frequency has
# twice the w at 32x32, so the same physical blur needs a quarter of the exponent: the kernel (sigma =
# 0.4) is kept and f(N) is divided by 4 (quartic 0.140625 -> 0.03515625, log 0.6 -> 0.15). That
# matches the paper's blur (log of the amplitude kept) of the frequencies a 32x32 image holds to within
# 3 % up to a quarter of its Nyquist frequency; above, where the 3-tap kernel is no longer Gaussian, it
# is weaker: 0.88 of the paper's at half the Nyquist frequency, 0.52 at it. The eigenvalue floor (0.03)
# is kept; this kernel never reaches it (its smallest 1-D eigenvalue is 0.839 at every size), at 64x64
# or here. (scripts/table1.py --paper-blur runs the paper's f(N) unscaled instead: two to four times
# the paper's blur relative to the scene.)
#
# Network and optimiser: the `toy` preset's, unchanged (the `tiny` UNet widened to 64 channels, (1, 1, 2):
# 3.5 M parameters; lr 5e-4 with a 200-step warm-up, clipping at 1, EMA 0.999, batch 16), whose recipe
# was measured stable on two CPU cores. Not the cheaper 32-channel `tiny` (1.6x the toy's step cost
# instead of 3.6x): with 32 channels at full resolution its last GroupNorm (32 groups) normalises every
# channel on its own, which removes each channel's spatial mean, so the network can hardly output the
# image mean of eps. Photographs vary far more in brightness than the toy's discs (the mean frequency's
# power is 46 against 5.5 at 16x16), and both samplers inflate that frequency when the network's gain on
# it is below 1 at large t: measured on 16x16 crops, the DC gain at t = N was 0.37 after 2500 steps with
# 32 channels and 0.46 -> 0.67 over steps 600 -> 1400 with 64, and every such model's samples were
# saturated colour fields (the failure the toy's note above describes at 32x32). Hence model_output
# "eps_residual": the network adds to the Gaussian reference's ε (ReferenceResidual), whose DC gain is
# right from the first step (measured at 16x16 after 500 steps: samples std 0.52 against the data's
# 0.54, no divergence, where the plain ε network still diverged at 1400). At 32x32 a step takes
# about 0.5 s and a forward pass of 32 images 0.3 s on two idle cores (3.6x and 2.4x the toy's step).
_PHOTOS32 = replace(_LSUN64, resolution=32, sigma=0.4, eig_floor=0.03)
_PHOTOS32_TRAIN = dict(
    unet_overrides=dict(model_channels=64, channel_mult=(1, 1, 2)),
    lr=5e-4,
    batch_size=16,
    ema_decay=0.999,
    warmup_steps=200,
    grad_clip=1.0,
    model_output="eps_residual",
)
PRESETS.update(
    {
        f"photos32-{row}": ExperimentPreset(
            # the paper's f(N) at 64x64 (Table 1) scaled by (32/64)^2
            f"photos32-{row}",
            replace(_PHOTOS32, blur_schedule=schedule, f_max=PAPER_F_MAX[schedule] * (32 / 64) ** 2),
            "tiny",
            **_PHOTOS32_TRAIN,
        )
        for row, schedule in (("quartic", "quartic"), ("log", "log"), ("noblur", "none"))
    }
)

# The other process families (docs/design.md §1) with the toy's and the photos' training recipes, so
# that only the process differs (scripts/head_to_head.py). The papers' settings are for 32x32
# (CIFAR-10): hoogeboom σ_B,max = 20, d_min = 0.001; rissanen σ_B,min = 0.5, σ_B,max = 24, σ = 0.01.
# σ_B is a length in pixels: frequency index i has λ = (π i/H)², so a = exp(-λ σ_B²/2) keeps the same
# blur of the same image frequency when σ_B scales with H. At 16x16 they are halved (10; 0.25 and 12).
#
# The toy rows (toy-noblur: DDPM, toy-lee: the toy preset's quartic blur, toy-hoogeboom, toy-rissanen)
# take the toy's recipe with the photos' `eps_residual` output, the same for all four. Rissanen's
# process needs it: its destroyed frequencies hold x_t = 0.01 ε, so a plain ε network must learn a
# gain of 100 on them before its samples stop exploding. Measured on 512 toy images after 300 steps,
# `ancestral` K = 50 samples of the EMA weights: rissanen std 8e6 with `eps`, in range with
# `eps_residual` (whose Gaussian reference has the right gain from the first step); hoogeboom std 1.8
# against in range; the toy preset (Lee, `eps`) 3.9 % of values beyond ±1.5. toy-noblur is DDPM:
# with nothing blurred the forward law is the same in every basis, and this one keeps the samplers'
# Gaussian reference spectral.
_HOOGEBOOM32 = dict(family="hoogeboom", basis="dct", blur_sigma_max=20.0, d_min=0.001)
_RISSANEN32 = dict(family="rissanen", basis="dct", blur_sigma_min=0.5, blur_sigma_max=24.0, noise_sigma=0.01)


def _at(resolution: int, family: dict[str, Any]) -> dict[str, Any]:
    scaled = {k: v * resolution / 32 for k, v in family.items() if k.startswith("blur_sigma")}
    return dict(family, **scaled)


_TOY_PROCESSES = {
    "toy-noblur": dict(blur_schedule="none", f_max=0.0),
    "toy-lee": {},
    "toy-hoogeboom": _at(16, _HOOGEBOOM32),
    "toy-rissanen": _at(16, _RISSANEN32),
}
PRESETS.update(
    {
        name: replace(
            PRESETS["toy"], name=name, process=replace(PRESETS["toy"].process, **process), model_output="eps_residual"
        )
        for name, process in _TOY_PROCESSES.items()
    }
)
PRESETS.update(
    {
        name: ExperimentPreset(name, replace(_PHOTOS32, **process), "tiny", **_PHOTOS32_TRAIN)
        for name, process in (("photos32-hoogeboom", _HOOGEBOOM32), ("photos32-rissanen", _RISSANEN32))
    }
)


def get_preset(name: str) -> ExperimentPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]
