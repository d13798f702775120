"""Sampling with the step captured as a CUDA graph (``Sampler.sample(cuda_graph=True)``).

On the CPU the graph loop (``blurdiff.samplers._graph_loop``) runs with a fake in place of its CUDA
part (``_CudaGraph``) that keeps what a CUDA graph does to the values, and must give the plain loop's
samples bit for bit: every buffer the step reads has to be set right between replays, and the
generator has to be where the plain loop has it at every step. The ``cuda`` tests capture real
graphs and skip cleanly without a GPU.
"""

from dataclasses import replace

import pytest
import torch

import blurdiff_ops
from blurdiff import BlurDiffusion, ProcessConfig, build_unet, samplers
from blurdiff.devices import sampling_network
from blurdiff.presets import get_preset
from blurdiff.samplers import SAMPLERS, make_sampler
from blurdiff.statistics import DataStatistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)

HAS_CUDA = torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")
WARMUP = samplers._CudaGraph.WARMUP  # the real graph's warm-up runs, which the fake repeats
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels")


class FakeGraph:
    """Stands in for ``samplers._CudaGraph`` on the CPU and does to the values what a CUDA graph
    does: the warm-up runs draw random numbers; the capture computes nothing (its outputs hold NaN
    until the first replay) and leaves the generator where it was; each replay runs the captured
    step again, reading the buffers as they are then, into the captured output tensors."""

    made: list["FakeGraph"] = []

    def __init__(self, generator):
        self.rng = generator if generator is not None else torch.default_generator
        self.captures = self.replays = 0
        FakeGraph.made.append(self)

    def capture(self, body):
        for _ in range(WARMUP):
            body()
        state = self.rng.get_state()
        self.body, self.outputs = body, body()
        self.rng.set_state(state)
        for out in self.outputs:
            out.fill_(float("nan"))
        self.captures += 1
        return self.outputs

    def replay(self):
        for out, new in zip(self.outputs, self.body()):
            out.copy_(new)
        self.replays += 1


class Bar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


@pytest.fixture
def fake_graph(monkeypatch):
    FakeGraph.made.clear()
    monkeypatch.setattr(samplers, "_CudaGraph", FakeGraph)
    return FakeGraph.made


def _network(preset="tiny", **overrides):
    model = build_unet(preset, **overrides).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # every block's last conv is zero-initialised: give eps signal, and t a say in it
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=0.05)
    return model


def _process(config, backend="auto"):
    """The process with data statistics (the integrators' Gaussian reference) of a falling spectrum."""
    process = BlurDiffusion(config, backend=backend)
    H, W = process.resolution
    power = torch.linspace(2.0, 0.05, H * W, dtype=torch.float64).reshape(H, W)
    process.data_stats = DataStatistics(100, [0.0] * 3, [0.5] * 3, power)
    return process


def _recorder(seen):
    return lambda s, x, eps: seen.append((s, x, eps))  # kept as given: they must stay as they were


def _same_sequence(a, b):
    return len(a) == len(b) and all(
        s == t and torch.equal(x, y) and torch.equal(e, f) for (s, x, e), (t, y, f) in zip(a, b)
    )


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "default-generator"])
def test_graph_loop_gives_the_plain_loops_samples(fake_graph, name, seeded):
    process = _process(ProcessConfig(resolution=8, num_timesteps=20))
    sampler = make_sampler(process, 20 if name == "ddpm" else 6, name)
    model = _network(image_size=8)
    shape = (3, 3, 8, 8)

    def generator():
        torch.manual_seed(5)
        return torch.Generator().manual_seed(11) if seeded else None

    plain_seen, graph_seen = [], []
    g = generator()
    plain = sampler.sample(model, shape, generator=g, callback=_recorder(plain_seen), guard=False)
    plain_rng = (g if seeded else torch.default_generator).get_state()

    g = generator()
    bar = Bar()
    with torch.no_grad():
        x = process.prior_sample(shape, g, "cpu", torch.float32, sampler.reference_var)
        graphed = samplers._graph_loop(sampler, model, x, g, _recorder(graph_seen), bar)

    assert torch.equal(graphed, plain)
    assert plain.abs().max() > 0.1  # not a trivially equal pair of zeros
    assert _same_sequence(graph_seen, plain_seen)
    assert [s for s, _, _ in graph_seen] == list(sampler.timesteps)
    # The replays drew what the plain steps drew, and nothing more.
    assert torch.equal((g if seeded else torch.default_generator).get_state(), plain_rng)
    (graph,) = fake_graph
    assert (graph.captures, graph.replays, bar.n) == (1, sampler.K, sampler.K)


def test_cuda_graph_needs_a_cuda_device():
    process = _process(ProcessConfig(resolution=8, num_timesteps=20))
    sampler = make_sampler(process, 5, "ddim")
    with pytest.raises(ValueError, match="^cuda_graph needs a CUDA device, got cpu$"):
        sampler.sample(_network(image_size=8), (1, 3, 8, 8), cuda_graph=True)


# --------------------------------------------------------------------------- on a GPU
def _toy(name, backend="auto"):
    """The toy preset's process and network on the GPU; K = 10 (ddpm: all steps of a 10-step process)."""
    preset = get_preset("toy")
    config = replace(preset.process, num_timesteps=10) if name == "ddpm" else preset.process
    process = _process(config, backend)
    torch.manual_seed(0)
    net = _network(preset.unet).cuda()
    return make_sampler(process, 10, name), net


def _run_both(sampler, net, seeded, shape=(16, 3, 16, 16)):
    results = []
    for cuda_graph in (False, True):
        torch.cuda.manual_seed(5)
        g = torch.Generator("cuda").manual_seed(11) if seeded else None
        seen = []
        x = sampler.sample(
            net, shape, generator=g, device="cuda", callback=_recorder(seen), guard=False, cuda_graph=cuda_graph
        )
        rng = (g if seeded else torch.cuda.default_generators[torch.cuda.current_device()]).get_state()
        results.append((x, seen, rng))
    return results


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "default-generator"])
@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_gives_the_eager_samples(name, seeded):
    sampler, net = _toy(name)
    (plain, plain_seen, plain_rng), (graphed, graph_seen, graph_rng) = _run_both(sampler, net, seeded)
    assert torch.equal(graphed, plain)
    assert plain.abs().max() > 0.1
    assert _same_sequence(graph_seen, plain_seen)
    assert torch.equal(graph_rng, plain_rng)  # the same draws, and no more


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_on_the_reference_ops():
    """The plain-PyTorch ops capture too: their check of t's range (a read-back) is skipped while capturing."""
    sampler, net = _toy("ancestral2m", backend="reference")
    (plain, plain_seen, plain_rng), (graphed, graph_seen, graph_rng) = _run_both(sampler, net, True)
    assert torch.equal(graphed, plain) and _same_sequence(graph_seen, plain_seen) and torch.equal(graph_rng, plain_rng)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_with_the_network_in_bf16():
    sampler, net = _toy("ancestral2m")
    (plain, plain_seen, _), (graphed, graph_seen, _) = _run_both(sampler, sampling_network(net, "bf16"), True)
    assert torch.equal(graphed, plain) and _same_sequence(graph_seen, plain_seen)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_graph_on_a_device_that_is_not_the_current_one():
    sampler, net = _toy("ancestral2m")
    net = net.to("cuda:1")
    results = []
    for cuda_graph in (False, True):
        g = torch.Generator("cuda:1").manual_seed(11)
        x = sampler.sample(net, (16, 3, 16, 16), generator=g, device="cuda:1", guard=False, cuda_graph=cuda_graph)
        results.append(x)
    assert torch.cuda.current_device() == 0 and torch.equal(results[1], results[0])
