"""Experiment presets (docs/presets.md): the process (a :class:`~blurdiff.diffusion.ProcessConfig`), the
network (a ``build_unet`` preset and overrides) and the optimisation defaults, which options override."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from blurdiff.diffusion import ProcessConfig
from blurdiff.schedules import PAPER_F_MAX

_LSUN64 = ProcessConfig(
    resolution=64, basis="gaussian", sigma=0.4, noise_schedule="linear", num_timesteps=1000, direction="coarse_to_fine"
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


#: The training recipe of the ``tiny`` network, on the toy data and on the photographs alike.
_TINY_TRAIN = dict(
    unet_overrides=dict(model_channels=64, channel_mult=(1, 1, 2)), lr=5e-4, ema_decay=0.999, warmup_steps=200
)

PRESETS: dict[str, ExperimentPreset] = {
    # Table 1: f(N) = 0.14 quartic (the paper's best), 0.6 log, and no blur (DDPM in the basis).
    "lsun64-quartic": ExperimentPreset(
        "lsun64-quartic", replace(_LSUN64, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2), "adm-lsun64"
    ),
    "lsun64-log": ExperimentPreset("lsun64-log", replace(_LSUN64, blur_schedule="log", f_max=0.6), "adm-lsun64"),
    "lsun64-noblur": ExperimentPreset("lsun64-noblur", replace(_LSUN64, blur_schedule="none", f_max=0.0), "adm-lsun64"),
    # Two CPU cores, minutes (docs/presets.md).
    "toy": ExperimentPreset(
        "toy",
        replace(_LSUN64, resolution=16, blur_schedule="quartic", f_max=(0.15 / 0.4) ** 2),
        "tiny",
        **_TINY_TRAIN,
        lr_schedule="cosine",
    ),
}

# Table 1 in miniature (scripts/table1.py) at 32x32 on `blurdiff data photos`: the toy's network and
# optimiser for all three rows, the `eps_residual` output, the same physical blur as at 64x64 (the
# kernel kept, f(N) divided by 4). Why: docs/presets.md.
_PHOTOS32 = replace(_LSUN64, resolution=32)
_PHOTOS32_TRAIN = dict(_TINY_TRAIN, model_output="eps_residual")
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
# that only the process differs (scripts/head_to_head.py): the papers' 32x32 settings, σ_B scaled
# with the side (halved at 16x16), and `eps_residual` for every toy row. Why: docs/presets.md.
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
