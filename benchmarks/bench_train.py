"""Training throughput, and the share of a training step that is the diffusion process.

    pytest benchmarks/bench_train.py --benchmark-only [--benchmark-json=out.json]

- ``toy-cpu``: the ``toy`` preset (the tiny UNet widened to 64 channels), batch 16, 16x16, on the CPU.
- ``adm-lsun64``: the paper's 121 M-parameter UNet, batch 16, 64x64, on CUDA, in float32 and
  with ``--amp bf16`` (skipped without CUDA).

A "step" is what the trainer does per optimizer step: fetch a batch, draw t and noise, q_sample
through the fused op, the network forward and backward, the gradient norm, Adam, the EMA.
``extra_info`` holds steps/s and images/s; the ``process`` benchmarks time everything of a step
but the network (t and noise draws, q_sample, the MSE loss) and report its share of a whole step
(``process_share``), so the cost of the blur process next to the UNet is one number.
``test_toy_step_against_eager`` times the toy step with ``--fused-adam`` and the decode cache (on
by default), or with ``--compile``, with one step of the default (Adam, no cache, eager) between
its rounds, on the demo's kind of data (webp in an lmdb): ``extra_info["speedup"]`` is the ratio
of their medians, measured in the same seconds. Each benchmark runs a few seconds.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
from PIL import Image

import blurdiff_ops
from blurdiff.toy_data import make_toy_lmdb, toy_image
from blurdiff.train import Trainer, build_trainer
from blurdiff.train_options import TrainOptions

HAS_CUDA = torch.cuda.is_available()

CASES = {
    # name: (preset, resolution, batch, device, amp, rounds)
    "toy-cpu": ("toy", 16, 16, "cpu", "none", 8),
    "adm-lsun64-cuda": ("lsun64-quartic", 64, 16, "cuda", "none", 30),
    "adm-lsun64-cuda-bf16": ("lsun64-quartic", 64, 16, "cuda", "bf16", 30),
}
_needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
PARAMS = [pytest.param(name, marks=[_needs_cuda] if "cuda" in name else []) for name in CASES]


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """Toy dead-leaves PNGs per resolution (an image folder: no lmdb needed on a GPU box)."""
    made = {}

    def get(size: int):
        if size not in made:
            folder = tmp_path_factory.mktemp(f"toy{size}")
            for i in range(64):
                Image.fromarray(toy_image(i, size)).save(folder / f"{i:03d}.png")
            made[size] = folder
        return made[size]

    return get


def _trainer(case, image_folders, tmp_path) -> Trainer:
    preset, res, batch, device, amp, _ = CASES[case]
    options = TrainOptions(
        data=str(image_folders(res)),
        preset=preset,
        out=str(tmp_path / "run"),
        max_steps=10**9,
        batch_size=batch,
        resolution=res,
        device=device,
        amp=amp,
        num_workers=0 if device == "cpu" else 2,
        sample_every=0,
        ckpt_every=0,
        progress=False,
    )
    trainer = build_trainer(options)
    for _ in range(3):  # warm up: allocator, oneDNN/cuDNN kernel choice, DataLoader start
        trainer.run_step(trainer._next_batch())
    _sync(trainer.device)
    return trainer


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _step(trainer: Trainer) -> None:
    trainer.run_step(trainer._next_batch())  # run_step ends in a host sync (the loss check)


def _process_part(trainer: Trainer, x0: torch.Tensor) -> None:
    """Everything of a step but the network: t, noise, q_sample (fused op), the loss."""
    t, noise = trainer._draw_t_noise(x0)
    x_t = trainer.process.q_sample(x0, t, noise)
    torch.nn.functional.mse_loss(x_t, noise).item()  # x_t stands in for eps_pred; .item() syncs like a step


def _median_time(fn, rounds: int, device) -> float:
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.mark.parametrize("case", PARAMS)
def test_train_step(benchmark, case, image_folders, tmp_path):
    trainer = _trainer(case, image_folders, tmp_path)
    rounds = CASES[case][-1]
    benchmark.group = "train step"
    benchmark.pedantic(_step, args=(trainer,), rounds=rounds, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        steps_per_s=1 / median,
        images_per_s=trainer.global_batch / median,
        batch=trainer.global_batch,
        resolution=trainer.process.resolution[0],
        params_M=sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        fused_kernels=blurdiff_ops.kernels_available(trainer.device.type),
        device=str(trainer.device),
        threads=torch.get_num_threads(),
    )
    trainer.close()


@pytest.mark.parametrize("case", PARAMS)
def test_process_share_of_step(benchmark, case, image_folders, tmp_path):
    trainer = _trainer(case, image_folders, tmp_path)
    rounds = CASES[case][-1]
    x0 = trainer._next_batch()
    step = _median_time(lambda: _step(trainer), rounds, trainer.device)
    benchmark.group = "process part of a train step"
    benchmark.pedantic(_process_part, args=(trainer, x0), rounds=max(rounds, 20), iterations=1, warmup_rounds=2)
    process = benchmark.stats.stats.median
    benchmark.extra_info.update(
        process_s=process,
        step_s=step,
        process_share=process / step,
        device=str(trainer.device),
        batch=trainer.global_batch,
    )
    trainer.close()


@pytest.fixture(scope="module")
def toy_lmdb(tmp_path_factory):
    """The demo's data in small: 512 dead-leaves images, webp in an lmdb, 32x32 (trained at 16x16)."""
    path = tmp_path_factory.mktemp("toy") / "data"
    make_toy_lmdb(str(path), 512, 32)
    return path


# name: (the options against the default step's, warm-up steps: one epoch fills the decode cache)
TOY_VARIANTS = {"fused-adam+cache": (dict(fused_adam=True), 512 // 16), "compiled": (dict(compile=True, cache_mb=0), 3)}


@pytest.mark.parametrize("variant", TOY_VARIANTS)
def test_toy_step_against_eager(benchmark, variant, toy_lmdb, tmp_path):
    def trainer(name: str, warmup: int, **options) -> tuple[Trainer, float]:
        base = dict(preset="toy", max_steps=10**9, device="cpu", num_workers=0, sample_every=0, ckpt_every=0)
        t = build_trainer(TrainOptions(data=str(toy_lmdb), out=str(tmp_path / name), progress=False, **base, **options))
        start = time.perf_counter()
        _step(t)  # compiles, for the compiled variant
        first = time.perf_counter() - start
        for _ in range(warmup):
            _step(t)
        return t, first

    options, warmup = TOY_VARIANTS[variant]
    eager, _ = trainer("eager", 3, cache_mb=0)
    fast, first_call_s = trainer("fast", warmup, **options)
    times = []

    def between_rounds():
        start = time.perf_counter()
        _step(eager)
        times.append(time.perf_counter() - start)

    rounds = 40
    benchmark.group = f"toy train step, {variant} vs the default, paired"
    benchmark.pedantic(_step, args=(fast,), setup=between_rounds, rounds=rounds, iterations=1, warmup_rounds=2)
    eager_median, median = statistics.median(times[-rounds:]), benchmark.stats.stats.median
    benchmark.extra_info.update(
        paired={"eager": {"min": min(times[-rounds:]), "median": eager_median}},
        steps_per_s={variant: 1 / median, "eager": 1 / eager_median},
        images_per_s={variant: fast.global_batch / median, "eager": eager.global_batch / eager_median},
        speedup=eager_median / median,
        first_call_s=first_call_s,  # the compile time, for the compiled variant
        threads=torch.get_num_threads(),
    )
    eager.close()
    fast.close()
