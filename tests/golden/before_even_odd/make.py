"""Writes tests/golden/before_even_odd/: a checkpoint and its samples, made by the code before the
even/odd products (commit ca10b44), for test_even_odd's old-checkpoint test."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from blurdiff.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from blurdiff.unet import UNet, UNetConfig

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
PROCESS = dict(
    resolution=16,
    basis="gaussian",
    sigma=0.4,
    blur_schedule="quartic",
    f_max=0.140625,
    noise_schedule="linear",
    steps=20,
    direction="coarse_to_fine",
)
cfg = UNetConfig(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1,), attention_ds=(1,), num_heads=1)
torch.manual_seed(0)
model = UNet(cfg)
with torch.no_grad():
    for p in model.out.parameters():
        p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
state = {
    "step": 1,
    "model": model.state_dict(),
    "ema": model.state_dict(),
    "optimizer": {},
    "config": {"preset": "toy", "process": PROCESS, "unet": dataclasses.asdict(cfg), "train": {}},
}
save_checkpoint(state, out / "checkpoint.pt")
proc, net = build_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))
samples = {}
with torch.no_grad():
    for kind, steps in (("ddpm", None), ("ancestral2m", 8), ("ddim", 8)):
        samples[kind] = proc.sample(
            net, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), kind=kind, steps=steps, guard=False
        ).numpy()
np.savez(out / "samples.npz", **samples)
print({k: float(np.abs(v).mean()) for k, v in samples.items()})
