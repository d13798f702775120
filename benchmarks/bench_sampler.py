"""The sampler's cost beside the network, per step: fused kernels vs the plain-PyTorch reference.

    pytest benchmarks/bench_sampler.py --benchmark-only

For batch 16 x 3 x {32, 64}² and each backend:

- ``op``: one reverse step with a precomputed ε (the one ``spectral_lincomb`` of a ``Sampler``
  step, noise drawn by the op) — the sampler's own cost;
- ``full``: one whole step, the ``tiny`` UNet's ε then the op.

Each ``full`` row prints the op's share of the step (op median / full median) and, once both
backends ran, the reference/fused ratio of the op. CUDA rows are skipped without a GPU.

``test_compiled_sampling``: ``blurdiff sample --compile``'s network (the ``toy`` preset's,
``CompiledNetwork``) against the eager one, whole ``ancestral2m`` samples at K = 50 of batch 128 on
the CPU, each compiled sample paired with an eager one between them; ``extra_info`` holds the
images/s of both, their ratio and the compile time (the first call).

CPU rows run with 1 thread and with 2 (the machine's cores): on a two-core machine that is busy
with anything else, two-thread timings of small ops measure the scheduler (every parallel region
waits for a descheduled thread), so compare the 1-thread rows there.
"""

import contextlib
import statistics
import time

import pytest
import torch

import blurdiff_ops
from blurdiff import BlurDiffusion, ProcessConfig, build_unet
from blurdiff.devices import CompiledNetwork
from blurdiff.presets import get_preset
from blurdiff.samplers import make_sampler

BATCH = 16
RESOLUTIONS = (32, 64)
BACKENDS = ("fused", "reference")
_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ("cpu-1t", "cpu-2t", pytest.param("cuda", marks=_CUDA))

_medians = {}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _threads(device):
    """``cpu-Nt``: N torch threads for the test, restored afterwards."""
    before = torch.get_num_threads()
    if device.startswith("cpu-"):
        torch.set_num_threads(int(device[4:-1]))
    try:
        yield "cpu" if device.startswith("cpu") else device
    finally:
        torch.set_num_threads(before)


def _setup(device, res, backend):
    if backend == "fused" and not blurdiff_ops.kernels_available(device):
        pytest.skip(f"compiled {device} kernels not built")
    process = BlurDiffusion(ProcessConfig(resolution=res), backend=backend)  # the paper's quartic blur, N = 1000
    sampler = make_sampler(process, None, "ddpm")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(BATCH, 3, res, res, device=device, generator=g)
    eps = torch.randn(BATCH, 3, res, res, device=device, generator=g)
    k = torch.full((BATCH,), 500, dtype=torch.int64, device=device)
    sampler.step(x, eps, k, generator=g)  # build and cache the device tables
    return process, sampler, g, x, eps, k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_op(benchmark, device, res, backend):
    with _threads(device) as dev:
        _, sampler, g, x, eps, k = _setup(dev, res, backend)

        def step():
            y = sampler.step(x, eps, k, generator=g)
            _sync(dev)
            return y

        benchmark.group = f"{device} {res}x{res} op"
        benchmark(step)
    _medians[(device, res, backend, "op")] = benchmark.stats.stats.median


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_full(benchmark, device, res, backend, capsys):
    with _threads(device) as dev:
        _, sampler, g, x, eps, k = _setup(dev, res, backend)
        model = build_unet("tiny", image_size=res).to(dev).eval()
        t = k.clone()

        @torch.no_grad()
        def step():
            y = sampler.step(x, model(x, t), k, generator=g)
            _sync(dev)
            return y

        step()
        benchmark.group = f"{device} {res}x{res} full step (tiny UNet)"
        benchmark(step)
    full = benchmark.stats.stats.median
    _medians[(device, res, backend, "full")] = full
    op = _medians.get((device, res, backend, "op"))
    lines = []
    if op is not None:
        benchmark.extra_info["op_share"] = op / full
        lines.append(
            f"{device} {res}x{res} {backend:9s}: op {op * 1e3:8.3f} ms, full step {full * 1e3:8.2f} ms, "
            f"op share {100 * op / full:5.1f} %"
        )
    ops = [_medians.get((device, res, b, "op")) for b in BACKENDS]
    if backend == BACKENDS[-1] and None not in ops:
        lines.append(f"{device} {res}x{res} op reference/fused = {ops[1] / ops[0]:.2f}x")
    with capsys.disabled():
        for line in lines:
            print("\n  " + line, end="")


def test_compiled_sampling(benchmark):
    preset = get_preset("toy")
    process = BlurDiffusion(preset.process)
    torch.manual_seed(0)
    net = build_unet(preset.unet).eval()
    sampler = make_sampler(process, 50, "ancestral2m")
    shape = (128, net.config.in_channels, *process.resolution)

    def draw(model):
        return sampler.sample(model, shape, generator=torch.Generator().manual_seed(0), guard=False)

    compiled = CompiledNetwork(net)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(torch.zeros(shape), torch.full(shape[:1], 1))  # compiles
    compile_s = time.perf_counter() - start
    eager_times = []

    def between_rounds():
        start = time.perf_counter()
        draw(net)
        eager_times.append(time.perf_counter() - start)

    rounds = 3
    benchmark.group = "toy sampling, ancestral2m K=50, batch 128, compiled vs eager, paired"
    benchmark.pedantic(draw, args=(compiled,), setup=between_rounds, rounds=rounds, iterations=1, warmup_rounds=1)
    eager = statistics.median(eager_times[-rounds:])
    compiled_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        compile_s=compile_s,
        images_per_s={"compiled": shape[0] / compiled_s, "eager": shape[0] / eager},
        speedup=eager / compiled_s,
        threads=torch.get_num_threads(),
    )
