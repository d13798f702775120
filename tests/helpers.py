"""Helpers shared by test modules (a module, not a test: pytest collects nothing here).

A run of the documented checkpoint format for the sampling, export and checkpoint tests: a tiny
UNet at 16x16 with random weights and a 20-step process, so every sampling run takes well under a
second; and a way to damage a checkpoint's bytes on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from blurdiff.checkpoint import checkpoint_path, save_checkpoint
from blurdiff.unet import build_unet

RES, STEPS = 16, 20
PROCESS = dict(
    resolution=RES,
    basis="gaussian",
    sigma=0.4,
    blur_schedule="quartic",
    f_max=0.140625,
    noise_schedule="linear",
    steps=STEPS,
    direction="coarse_to_fine",
)


def tiny_weights(seed):
    model = build_unet("tiny", image_size=RES)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the last conv starts at zero: give eps some signal
        for p in model.out.parameters():
            p.normal_(0, 0.05, generator=g)
    return model


def make_run(root: Path, preset="toy", step=100) -> Path:
    model, ema = tiny_weights(1), tiny_weights(2)
    state = {
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": {},
        "config": {"preset": preset, "process": dict(PROCESS), "unet": dataclasses.asdict(model.config), "train": {}},
    }
    save_checkpoint(state, checkpoint_path(root, step))
    return root


def flip_bytes_inside(path, tensor: torch.Tensor, n: int = 64) -> None:
    """Flip the lowest bit of ``n`` bytes in the middle of ``tensor``'s data in the file ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.numpy().tobytes()
    start = data.find(raw)
    assert start >= 0 and data.count(raw) == 1
    for i in range(start + len(raw) // 2, start + len(raw) // 2 + n):
        data[i] ^= 1
    path.write_bytes(bytes(data))
