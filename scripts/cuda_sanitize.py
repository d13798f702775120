"""A few small CUDA calls of every kernel configuration, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/cuda_sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/cuda_sanitize.py

Covers the fused kernel (forced, where its plan fits the device) with fewer product tiles than
threads, one and several a thread (ragged widths included), every dtype, drawn and given noise,
several outputs (the backward op), the fused kernel split over several blocks per plane
(forced), and the GEMM path (forced) with its combine kernel. Small on
purpose: the sanitizers slow kernels down by orders of magnitude.
"""

import torch

import blurdiff_ops
from blurdiff.bases import make_basis
from blurdiff_ops.testing import map_path


def main() -> None:
    assert torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda"), "needs a GPU and the CUDA kernels"
    dev = "cuda"
    ops = torch.ops.blurdiff_ops
    for H, W in [(5, 7), (16, 16), (31, 36), (64, 64), (128, 128), (150, 130)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            if dtype == torch.float64 and H * W > 64 * 64:
                continue
            table = torch.float64 if dtype == torch.float64 else torch.float32
            b = make_basis("gaussian", H, W)
            U_h, U_w = b.U_h.to(dev, table), b.U_w.to(dev, table)
            xs = [torch.randn(2, 3, H, W, device=dev).to(dtype) for _ in range(2)]
            coefs = torch.randn(2, 4, H, W, device=dev, dtype=table)
            nc = torch.rand(4, H, W, device=dev, dtype=table)
            t = torch.tensor([0, 3], device=dev)
            for path in ("fused", "split", "gemm"):
                with map_path(path):
                    try:
                        ops.to_spectral(xs[0], U_h, U_w)
                    except ValueError:  # a fused plan larger than the device's shared memory
                        continue
                    g = torch.Generator(dev).manual_seed(0)
                    ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, None, g)
                    ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, xs[0], None)
                    ops.spectral_lincomb_backward(xs[0], coefs, t, U_h, U_w, nc)
                    ops.from_spectral(xs[0], U_h, U_w)
    torch.cuda.synchronize()
    print("cuda_sanitize: all calls completed")


if __name__ == "__main__":
    main()
