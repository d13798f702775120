"""Helpers shared by test modules (a module, not a test: pytest collects nothing here).

A run of the documented checkpoint format for the sampling, export and checkpoint tests: a tiny
UNet at 16x16 with random weights and a 20-step process, so every sampling run takes well under a
second; a way to damage a checkpoint's bytes on disk; and every op's arguments in every memory
layout (``CASES``, ``LAYOUTS``, ``check_views``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import blurdiff_ops.reference as R
from blurdiff.bases import make_basis
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
    num_timesteps=STEPS,
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


def cannot_compile(model, **options):
    """``torch.compile`` where the backend cannot compile: the compiled function fails when called."""

    def fail(*args):
        raise RuntimeError("no C++ compiler")

    return fail


def flip_bytes_inside(path, tensor: torch.Tensor, n: int = 64) -> None:
    """Flip the lowest bit of ``n`` bytes in the middle of ``tensor``'s data in the file ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.numpy().tobytes()
    start = data.find(raw)
    assert start >= 0 and data.count(raw) == 1
    for i in range(start + len(raw) // 2, start + len(raw) // 2 + n):
        data[i] ^= 1
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ the ops' arguments in every layout
# (tests/test_op_inputs.py for the CPU kernels, tests/test_cuda_emulation.py for the CUDA host code)
B, C, H, W, T = 3, 2, 6, 10, 5


def _strided(x, fill):
    # Every other element of a buffer whose other elements are garbage.
    big = torch.full((*x.shape, 2), fill, dtype=x.dtype, device=x.device)
    big[..., 0] = x
    return big[..., 0]


def _offset(x, fill):
    # Contiguous, but 3 garbage elements into its storage.
    flat = torch.full((x.numel() + 3,), fill, dtype=x.dtype, device=x.device)
    flat[3:] = x.reshape(-1)
    return flat[3:].view(x.shape)


def _expanded(x, fill):
    # Stride 0 along dim 0 over a storage of one slice: other values than x, but valid ones.
    return x[:1].clone().expand(x.shape)


def _transposed(x, fill):
    # Column-major in the last two dims (a square matrix read as its transpose is the classic slip).
    return x.mT.contiguous().mT if x.dim() >= 2 else _strided(x, fill)


LAYOUTS = {"strided": _strided, "offset": _offset, "expanded": _expanded, "transposed": _transposed}


def op_problem(device="cpu", dtype=torch.float64, channels=C):
    g = torch.Generator().manual_seed(0)
    b = make_basis("gaussian", H, W)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    shape = (B, channels, H, W)
    return dict(
        x0=r(*shape),
        x1=r(*shape),
        coefs=r(2, T, H, W),
        t=torch.tensor([4, 0, 2], device=device),
        U_h=b.U_h.to(device, dtype),
        U_w=b.U_w.to(device, dtype),
        noise_coef=torch.rand(T, H, W, generator=g, dtype=torch.float64).to(device, dtype),
        noise=r(*shape),
    )


def _per_table(grad, coefs, t, U_h, U_w, noise_coef):
    tables = list(coefs) + ([noise_coef] if noise_coef is not None else [])
    return [R.spectral_lincomb([grad], c[None], t, U_h, U_w) for c in tables]


# name -> (the arguments it takes from _problem, call on an op namespace, the reference).
CASES = {
    "to_spectral": (
        ("x0", "U_h", "U_w"),
        lambda ops, a: ops.to_spectral(a["x0"], a["U_h"], a["U_w"]),
        lambda a: R.to_spectral(a["x0"], a["U_h"], a["U_w"]),
    ),
    "from_spectral": (
        ("x0", "U_h", "U_w"),
        lambda ops, a: ops.from_spectral(a["x0"], a["U_h"], a["U_w"]),
        lambda a: R.from_spectral(a["x0"], a["U_h"], a["U_w"]),
    ),
    "lincomb": (
        ("x0", "x1", "coefs", "t", "U_h", "U_w", "noise_coef", "noise"),
        lambda ops, a: ops.spectral_lincomb(
            [a["x0"], a["x1"]], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"], a["noise"]
        ),
        lambda a: R.spectral_lincomb(
            [a["x0"], a["x1"]], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"], a["noise"]
        ),
    ),
    # Drawn noise: the same seed on both calls; no reference (another generator).
    "lincomb_drawn_noise": (
        ("x0", "coefs", "t", "U_h", "U_w", "noise_coef"),
        lambda ops, a: ops.spectral_lincomb(
            [a["x0"]],
            a["coefs"][:1],
            a["t"],
            a["U_h"],
            a["U_w"],
            a["noise_coef"],
            None,
            torch.Generator().manual_seed(4),
        ),
        None,
    ),
    "lincomb_backward": (
        ("x0", "coefs", "t", "U_h", "U_w", "noise_coef"),
        lambda ops, a: ops.spectral_lincomb_backward(a["x0"], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"]),
        lambda a: _per_table(a["x0"], a["coefs"], a["t"], a["U_h"], a["U_w"], a["noise_coef"]),
    ),
}


def check_views(ops, case, device="cpu", channels=C, layouts=tuple(LAYOUTS)):
    """Each argument of ``case`` in each of ``layouts``, the others contiguous: the op on the view
    equals the op on its contiguous copy, bit for bit, and the reference on the view."""
    names, call, reference = CASES[case]
    base = op_problem(device, channels=channels)
    as_list = lambda y: list(y) if isinstance(y, (list, tuple)) else [y]  # noqa: E731
    for name in names:
        # Garbage that is still a valid t keeps a kernel that reads it wrong from crashing.
        fill = T - 1 if name == "t" else float("nan")
        for layout in layouts:
            args = dict(base)
            args[name] = LAYOUTS[layout](base[name], fill)
            assert not args[name].is_contiguous() or args[name].storage_offset() != 0
            got = as_list(call(ops, args))
            dense = as_list(call(ops, {**args, name: args[name].contiguous()}))
            where = f"{case}: {name} {layout}"
            for g, d in zip(got, dense, strict=True):
                assert torch.equal(g, d), where
            if reference is not None:
                for g, r in zip(got, as_list(reference(args)), strict=True):
                    err = (g.cpu() - r.cpu()).abs().max().item()
                    assert err <= 1e-10 * (r.abs().max().item() + 1), f"{where}: {err}"
