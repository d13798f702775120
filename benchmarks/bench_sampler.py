"""The sampler's cost beside the network, per step: fused kernels vs the plain-PyTorch reference.

    pytest benchmarks/bench_sampler.py --benchmark-only

For batch 16 x 3 x {32, 64}² and each backend:

- ``op``: one reverse step with a precomputed ε (the one ``spectral_lincomb`` of a ``Sampler``
  step, noise drawn by the op) — the sampler's own cost;
- ``full``: one whole step, the ``tiny`` UNet's ε then the op.

Each ``full`` row prints the op's share of the step (op median / full median) and, once both
backends ran, the reference/fused ratio of the op. CUDA rows are skipped without a GPU.

``test_sampling_against_eager``: whole ``ancestral2m`` samples at K = 50 with the network as
``blurdiff sample --compile``, ``--amp bf16`` or both run it (``sampling_network``), or (CUDA
only) the loop captured as a CUDA graph (``Sampler.sample(cuda_graph=True)``; a sample's time
includes its capture), each paired with a sample of the eager float32 loop between them: the
``toy`` preset's network at batch 128 on the CPU, ``adm-lsun64``'s at batch 16 on CUDA.
``extra_info`` holds the images/s of both, their ratio and the first call's time (the compile time).

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
from blurdiff.devices import sampling_network
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


# name: (preset, device, batch) of the end-to-end sampling benchmark
SAMPLING_CASES = {"toy-cpu": ("toy", "cpu", 128), "adm-lsun64-cuda": ("lsun64-quartic", "cuda", 16)}
# name: (sampling_network's options, Sampler.sample's), against the eager float32 network's loop;
# cheapest first (the GPU check has a time limit)
SAMPLING_VARIANTS = {
    "bf16": (dict(amp="bf16"), {}),
    "cuda-graph": ({}, dict(cuda_graph=True)),  # CUDA only
    "compiled": (dict(compile=True), {}),
    "compiled-bf16": (dict(compile=True, amp="bf16"), {}),
}


@pytest.mark.parametrize("variant", SAMPLING_VARIANTS)
@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=[_CUDA] if "cuda" in name else []) for name in SAMPLING_CASES]
)
def test_sampling_against_eager(benchmark, case, variant):
    preset_name, device, batch = SAMPLING_CASES[case]
    network_options, sample_options = SAMPLING_VARIANTS[variant]
    if sample_options.get("cuda_graph") and device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    preset = get_preset(preset_name)
    process = BlurDiffusion(preset.process)
    torch.manual_seed(0)
    net = build_unet(preset.unet).to(device).eval()
    sampler = make_sampler(process, 50, "ancestral2m")
    shape = (batch, net.config.in_channels, *process.resolution)

    def draw(model, **options):
        g = torch.Generator(device).manual_seed(0)
        x = sampler.sample(model, shape, generator=g, device=device, guard=False, **options)
        _sync(device)
        return x

    fast = sampling_network(net, **network_options)
    start = time.perf_counter()
    with torch.no_grad():
        fast(torch.zeros(shape, device=device), torch.full(shape[:1], 1, device=device))  # compiles
    _sync(device)
    first_call_s = time.perf_counter() - start
    eager_times = []

    def between_rounds():
        start = time.perf_counter()
        draw(net)
        eager_times.append(time.perf_counter() - start)

    rounds = 3
    benchmark.group = f"{case} sampling, ancestral2m K=50, batch {batch}: {variant} vs eager float32, paired"
    benchmark.pedantic(
        draw, args=(fast,), kwargs=sample_options, setup=between_rounds, rounds=rounds, iterations=1, warmup_rounds=1
    )
    eager = statistics.median(eager_times[-rounds:])
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        first_call_s=first_call_s,  # the compile time, for the compiled variants
        images_per_s={variant: batch / median, "eager": batch / eager},
        speedup=eager / median,
        threads=torch.get_num_threads(),
    )
