"""Head-to-head of the coarse-to-fine families: DDPM, Lee, Hoogeboom and Rissanen trained alike.

    python scripts/head_to_head.py --out DIR [--parts toy photos] [--seeds 0 1 2]
        [--toy-steps 1000] [--photos-steps 300] [--toy-n 32] [--photos-n 16] [--estimate-only] [table1 options]

One process per row (docs/design.md §1, blurdiff/presets.py), everything else shared: on the toy
images at 16x16 the presets ``toy-noblur`` (DDPM: no blur), ``toy-lee`` (the ``toy`` preset's
quartic blur), ``toy-hoogeboom`` and ``toy-rissanen``, with the toy's network, optimiser and data
order and the photos' ``eps_residual`` output (which rissanen needs, docs/presets.md); on the
photo crops at 32x32 ``photos32-noblur``, ``photos32-quartic``, ``photos32-hoogeboom`` and
``photos32-rissanen``, with the photos' recipe. Each row is trained for every seed (the seed of the
weights, t, noise and the data order: the rows of a seed see the same batches) for the part's step
budget, sampled from its EMA weights with the best few-step sampler (``ancestral2m``, K = 50) and
with all N steps (``ddpm``, the paper's Eq. 12 as the reverse of each family's chain), with the same
noise for every row of a seed, and scored with the quality yardstick against held-out data beside
its noise floor.

The machinery is scripts/table1.py's (``table1.main`` with an :class:`table1.Experiment` per part):
resumable (run the same command again; finished trainings, sample batches and scores are kept),
with a timing benchmark, an estimate before the work and progress with an ETA after every task.
Each part works in ``DIR/toy`` or ``DIR/photos`` (its own ``table.md``, ``figure.png``,
``results.json``); this script adds ``DIR/table.md`` (both tables) and ``DIR/figure.png``: each
family's forward process on the same held-out image (x_t and its noise-free mean a_t ⊙ x_0 at
t = 0, N/8, N/4, N/2, 3N/4, N), above each part's sample grids and radial spectra.

Options not listed above (``--n``, ``--fast-steps``, ``--num-timesteps``, ``--train-images``,
``--heldout-images``, ``--ckpt-every``, ``--threads``, ``--quiet``, ``--no-fid``, ``--settings``, ...)
go to both parts (``python scripts/table1.py --help``); ``--photos-n`` sets the photos' ``--n``.

Budget (the defaults), from the rates measured on two idle cores (scripts/table1.py, README): a toy
training step 0.15 s, a photo step 0.54 s (both with checkpoints and EMA), a sampling step 3.9 ms
(toy) and 9.8 ms (photo) per image. 3 seeds x 4 rows per part: 1000 steps on the toy data (2.8 min a
run, 33 min in all; the toy recipe's warm-up and cosine schedule over 1000 steps) and 300 on the
photos (2.7 min a run, 32 min); 32 toy and 16 photo samples per sampler, each with 50 and with all
1000 steps (2.2 and 2.8 min a run, 26 and 33 min: sampling all N dominates, which is why the photos
get the yardstick's minimum of 16). About 2 h 7 min with data and scoring. What a fixed small budget
shows is which process learns fastest, not where each converges. ``--estimate-only`` times this
machine and prints its own estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

import torch
from PIL import Image

from blurdiff.atomic import atomic_path, write_text_atomic
from blurdiff.diffusion import BlurDiffusion
from blurdiff.images import grid, upscale_factor
from blurdiff.quality import load_data_images

_spec = importlib.util.spec_from_file_location("table1", Path(__file__).resolve().parent / "table1.py")
table1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table1)

ROWS = ("ddpm", "lee", "hoogeboom", "rissanen")
PARTS = {
    "toy": table1.Experiment(
        "Head-to-head: toy images",
        dict(zip(ROWS, ("toy-noblur", "toy-lee", "toy-hoogeboom", "toy-rissanen"))),
        data="toy",
        scale_blur=False,
    ),
    "photos": table1.Experiment(
        "Head-to-head: photo crops",
        dict(zip(ROWS, ("photos32-noblur", "photos32-quartic", "photos32-hoogeboom", "photos32-rissanen"))),
        data="photos",
        scale_blur=False,
    ),
}
COLUMNS = (0, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="experiment folder (resumed when it holds the parts)")
    p.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--toy-steps", type=int, default=1000, help="optimizer steps per toy run")
    p.add_argument("--photos-steps", type=int, default=300, help="optimizer steps per photo run")
    p.add_argument("--toy-n", type=int, default=32, help="toy samples per run and sampler")
    p.add_argument("--photos-n", type=int, default=16, help="photo samples per run and sampler")
    p.add_argument("--photos-resolution", type=int, default=None, help="photo side (default 32; smaller for tests)")
    p.add_argument("--estimate-only", action="store_true", help="time this machine, print the estimate and stop")
    return p.parse_known_args(argv)


def part_argv(part: str, args, rest: list[str]) -> list[str]:
    argv = ["--out", str(Path(args.out) / part), "--seeds", *map(str, args.seeds), *rest]
    argv += ["--steps", str(args.toy_steps if part == "toy" else args.photos_steps)]
    argv += ["--n", str(args.toy_n if part == "toy" else args.photos_n)]
    if part == "photos" and args.photos_resolution is not None:
        argv += ["--resolution", str(args.photos_resolution)]
    return argv


def estimate(parts: dict[str, argparse.Namespace]) -> float:
    """Time this machine for each part (table1's benchmark) and print the estimate of what is left."""
    total = 0.0
    for part, a in parts.items():
        clock = table1.Clock()
        table1.benchmark(a, clock)
        N = table1.num_timesteps(a)
        runs = [table1.Run(Path(a.out), s, seed, a) for s in a.settings for seed in a.seeds]
        data_left = sum(
            n
            for n, d in ((a.train_images, "train"), (a.heldout_images, "heldout"))
            if not (Path(a.out) / "data" / d / "data.mdb").is_file()
        )
        left = table1.estimate(clock, table1.work_left(runs, a, N, data_left))
        full = table1.estimate(clock, table1.full_work(a, runs, N))
        print(f"head-to-head {part}: {len(runs)} runs, whole part {table1.hms(full)}, left {table1.hms(left)}")
        total += left
    print(f"head-to-head: about {table1.hms(total)} left in all", flush=True)
    return total


def forward_figure(part: str, a: argparse.Namespace) -> Image.Image:
    """Rows: each family's x_t and noise-free mean a_t ⊙ x_0 on the same held-out image and the same
    noise; columns: t = 0 … N."""
    x0 = load_data_images(Path(a.out) / "data" / "heldout", a.resolution, 1, seed=a.eval_seed)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    s = upscale_factor(a.resolution)
    panels = []
    for setting in a.settings:
        run = table1.Run(Path(a.out), setting, 0, a)
        process = BlurDiffusion(dataclasses.replace(run.process(), resolution=a.resolution), backend="reference")
        N = process.num_timesteps
        frames, means = [], []
        for c in COLUMNS:
            t = torch.full((1,), max(round(c * N), 1), dtype=torch.int64)
            frames.append(x0 if c == 0 else process.q_sample(x0, t, noise))
            means.append(x0 if c == 0 else process.q_sample(x0, t, torch.zeros_like(x0)))
        rows = torch.cat(frames + means).clamp(-1, 1).repeat_interleave(s, -2).repeat_interleave(s, -1)
        img = Image.fromarray(grid(rows, nrow=len(COLUMNS)))
        label = f"{part}, {setting} ({table1.process_text(run.process())}): x_t, then a_t x_0; t = 0 … N"
        panels.append(table1._label(img, label, img.width))
    return stacked(panels, gap=8)


def stacked(images: list[Image.Image], gap: int) -> Image.Image:
    """The images one below the other on white, `gap` pixels apart."""
    canvas = Image.new("RGB", (max(p.width for p in images), sum(p.height + gap for p in images)), "white")
    y = 0
    for p in images:
        canvas.paste(p, (0, y))
        y += p.height + gap
    return canvas


def write_summary(out: Path, parts: dict[str, argparse.Namespace]) -> tuple[Path, Path]:
    tables = [(Path(a.out) / "table.md").read_text() for a in parts.values()]
    table = out / "table.md"
    write_text_atomic(table, "\n".join(tables))
    pictures = []
    for part, a in parts.items():
        pictures.append(forward_figure(part, a))
        if (Path(a.out) / "figure.png").is_file():
            with Image.open(Path(a.out) / "figure.png") as img:
                pictures.append(img.convert("RGB"))
    canvas = stacked(pictures, gap=16)
    figure = out / "figure.png"
    with atomic_path(figure) as tmp:
        canvas.save(tmp, format="PNG")
    return table, figure


def main(argv=None) -> int:
    args, rest = parse_args(argv)
    out = Path(args.out)
    parts = {
        part: table1.parse_args(part_argv(part, args, rest), PARTS[part], description=__doc__) for part in args.parts
    }
    for a in parts.values():
        if a.threads:
            torch.set_num_threads(a.threads)
    estimate(parts)
    if args.estimate_only:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(args.parts):
        print(f"head-to-head: part {i + 1}/{len(parts)}, {part}", flush=True)
        if table1.main(part_argv(part, args, rest), PARTS[part]) != 0:
            return 1
    table, figure = write_summary(out, parts)
    print(f"head-to-head: table {table}, figure {figure}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
