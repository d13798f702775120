"""The process against the authors' values, an independent implementation, and plain DDPM."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import cannot_compile
from independent import Process

from blurdiff import BlurDiffusion, ProcessConfig
from blurdiff.bases import gaussian_kernel_1d
from blurdiff.devices import Autocast
from blurdiff.diffusion import ReferenceResidual, eps_model
from blurdiff.schedules import noise_betas
from blurdiff.statistics import DataStatistics

T_CHECK = [1, 2, 10, 500, 1000]


def test_golden_tables(golden):
    proc = BlurDiffusion(ProcessConfig(16), backend="reference")
    np.testing.assert_allclose(gaussian_kernel_1d(16, 0.4).numpy(), golden["kernel_1d"], rtol=0, atol=1e-15)
    d_sorted = np.sort(proc.D.numpy().ravel())[::-1]
    np.testing.assert_allclose(d_sorted, golden["eigenvalues_sorted"], rtol=0, atol=1e-12)
    # The authors stored f in float32.
    np.testing.assert_allclose(proc.f.numpy(), golden["f"].astype(np.float64), rtol=2e-7, atol=1e-20)


def test_golden_forward_and_reverse(golden):
    proc = BlurDiffusion(ProcessConfig(16), backend="reference")
    t = torch.from_numpy(golden["i"])
    tab = proc.tables("cpu", torch.float64)
    x0, eps = torch.from_numpy(golden["x0"]), torch.from_numpy(golden["eps"])
    ops = proc.ops(x0.device)
    q_mean = ops.spectral_lincomb([x0], tab["q_coefs"][0:1], t, tab["U_h"], tab["U_w"])
    q_noise = ops.spectral_lincomb([eps], tab["q_coefs"][1:2], t, tab["U_h"], tab["U_w"])
    np.testing.assert_allclose(q_mean.numpy(), golden["q_mean"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(q_noise.numpy(), golden["q_noise"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(proc.q_sample(x0, t, eps).numpy(), golden["x_i"], rtol=0, atol=1e-10)
    out = proc.reverse_step(
        torch.from_numpy(golden["step_x"]),
        torch.from_numpy(golden["step_eps_pred"]),
        t,
        noise=torch.from_numpy(golden["step_z"]),
    )
    np.testing.assert_allclose(out.numpy(), golden["step_out"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind,f_max", [("quartic", 0.140625), ("log", 0.6)])
@pytest.mark.parametrize("hw", [(64, 64), (24, 40)])
def test_against_independent_float64(kind, f_max, hw):
    H, W = hw
    ref = Process(H, W, kind, f_max)
    proc = BlurDiffusion(ProcessConfig((H, W), blur_schedule=kind, f_max=f_max), backend="reference")
    g = torch.Generator().manual_seed(1)
    B = len(T_CHECK)
    x0, eps, x, e, z = (torch.randn(B, 3, H, W, generator=g, dtype=torch.float64) for _ in range(5))
    t = torch.tensor(T_CHECK)
    np.testing.assert_allclose(
        proc.q_sample(x0, t, eps).numpy(), ref.q_sample(x0.numpy(), T_CHECK, eps.numpy()), rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(
        proc.reverse_step(x, e, t, noise=z).numpy(),
        ref.reverse_step(x.numpy(), e.numpy(), T_CHECK, z.numpy()),
        rtol=0,
        atol=1e-9,
    )


def test_identity_basis_without_blur_is_ddpm():
    proc = BlurDiffusion(ProcessConfig((8, 12), basis="identity", blur_schedule="none"), backend="reference")
    alpha_bar = torch.cumprod(1 - noise_betas("linear", 1000), 0)
    x0, eps = torch.randn(5, 3, 8, 12, dtype=torch.float64), torch.randn(5, 3, 8, 12, dtype=torch.float64)
    t = torch.tensor(T_CHECK)
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    ddpm = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(proc.q_sample(x0, t, eps), ddpm, rtol=0, atol=1e-12)


def test_last_step_adds_no_noise():
    proc = BlurDiffusion(ProcessConfig(8), backend="reference")
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 1])
    a = proc.reverse_step(x, e, t, noise=torch.randn(2, 3, 8, 8))
    b = proc.reverse_step(x, e, t, noise=torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(a, b)
    t2 = torch.tensor([2, 2])
    assert not torch.allclose(
        proc.reverse_step(x, e, t2, noise=torch.randn(2, 3, 8, 8)),
        proc.reverse_step(x, e, t2, noise=torch.randn(2, 3, 8, 8)),
    )


def test_fine_to_coarse_floors_and_is_finite():
    proc = BlurDiffusion(ProcessConfig(16, direction="fine_to_coarse"), backend="reference")
    assert proc.D.min() >= 0.03 - 1e-15
    assert torch.isfinite(proc.A_bar).all()
    c2f = BlurDiffusion(ProcessConfig(16), backend="reference")
    # The coarsest frequency decays slowest coarse-to-fine and fastest fine-to-coarse.
    assert c2f.A_bar[500, 0, 0] > c2f.A_bar[500, -1, -1]
    assert proc.A_bar[500, 0, 0] < proc.A_bar[500, -1, -1]


def test_forward_process_decays_high_frequencies_first():
    proc = BlurDiffusion(ProcessConfig(32), backend="reference")
    ratio = proc.A_bar[:, 0, 0] / proc.A_bar[:, -1, -1]
    # Coarse over fine grows monotonically: the finest frequency is destroyed first.
    assert (ratio.diff() >= 0).all() and ratio[1000] > 1e3
    assert proc.A_bar[1000].max() < 0.01


def test_bad_inputs_name_the_argument():
    proc = BlurDiffusion(ProcessConfig(8), backend="reference")
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="t must lie in 1"):
        proc.q_sample(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="t must lie in 1"):
        proc.q_sample(x, torch.tensor([1, 1001]))
    with pytest.raises(ValueError, match="t must be an int64"):
        proc.q_sample(x, torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="t must be an int64 tensor of shape"):
        proc.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="images must be"):
        proc.q_sample(torch.randn(2, 3, 8, 9), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        proc.q_sample(x, torch.tensor([1, 2]), noise=torch.randn(2, 3, 8, 7))
    with pytest.raises(ValueError, match="eps_pred must have the shape of x_t"):
        proc.reverse_step(x, torch.randn(1, 3, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="inputs\\[0\\] must be float32"):
        proc.q_sample(torch.zeros(2, 3, 8, 8, dtype=torch.int64), torch.tensor([1, 2]))
    for kwargs, msg in [
        (dict(direction="sideways"), "direction"),
        (dict(backend="fast"), "backend"),
        (dict(basis="wavelet"), "basis"),
        (dict(blur_schedule="exp"), "blur_schedule"),
        (dict(noise_schedule="sqrt"), "noise_schedule"),
        (dict(sigma=0.0), "sigma"),
        (dict(f_max=-1.0), "f_max"),
    ]:
        with pytest.raises(ValueError, match=msg):
            backend = kwargs.pop("backend", "auto")
            BlurDiffusion(ProcessConfig(8, **kwargs), backend)


def test_training_loss_and_sampling_run():
    proc = BlurDiffusion(ProcessConfig((8, 12), num_timesteps=20), backend="reference")
    model = lambda x, t: 0.1 * x  # noqa: E731
    x0 = torch.rand(3, 3, 8, 12) * 2 - 1
    loss = proc.training_loss(model, x0, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    seen = []
    out = proc.sample(
        model, (2, 3, 8, 12), generator=torch.Generator().manual_seed(3), callback=lambda i, x, e: seen.append(i)
    )
    assert out.shape == (2, 3, 8, 12) and torch.isfinite(out).all()
    assert seen == list(range(20, 0, -1))
    again = proc.sample(model, (2, 3, 8, 12), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again, rtol=0, atol=0)


def test_prior_has_the_forward_marginal_variance():
    proc = BlurDiffusion(ProcessConfig(8), backend="reference")
    x = proc.prior_sample((4000, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tab = proc.tables("cpu", torch.float64)
    spec = tab["U_h"].T @ x @ tab["U_w"]
    var = spec.var(dim=0)[0]
    torch.testing.assert_close(var, 1 - proc.A_bar[1000], rtol=0.1, atol=1e-3)


def test_process_config_is_what_the_process_is():
    """One description of the process: resolution kept as (H, W) whatever form it came in (JSON
    gives lists), frozen (the tables are built from it), and its record in field order."""
    config = ProcessConfig(resolution=[8, 12], num_timesteps=20)
    assert config.resolution == (8, 12) and ProcessConfig(resolution=8).resolution == (8, 8)
    assert ProcessConfig(**dataclasses.asdict(config)) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_timesteps = 30
    # What checkpoints record: no family fields for the paper's process, a family's own otherwise.
    assert list(config.to_dict()) == [
        "resolution", "basis", "sigma", "blur_schedule", "f_max", "noise_schedule", "num_timesteps",
        "direction", "eig_floor",
    ]  # fmt: skip
    hoogeboom = ProcessConfig(8, basis="dct", family="hoogeboom", noise_sigma=0.5)
    assert list(hoogeboom.to_dict())[-3:] == ["family", "blur_sigma_max", "d_min"]
    assert ProcessConfig(**hoogeboom.to_dict()) == dataclasses.replace(hoogeboom, noise_sigma=0.01)
    proc = BlurDiffusion(config, backend="reference")
    assert proc.config is config and proc.resolution == (8, 12) and proc.num_timesteps == 20
    with pytest.raises(TypeError, match="takes a ProcessConfig"):
        BlurDiffusion(dict(resolution=8))


def test_eps_model_gives_the_output_its_meaning():
    proc = BlurDiffusion(ProcessConfig(8, num_timesteps=10), backend="reference")
    net = torch.nn.Conv2d(3, 3, 1)
    assert eps_model(net, proc, "eps") is net
    wrapped = eps_model(net, proc, "eps_residual")
    assert isinstance(wrapped, ReferenceResidual) and wrapped.net is net
    with pytest.raises(ValueError, match="unknown model_output 'x0'"):
        eps_model(net, proc, "x0")


class _Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return 0.1 * self.conv(x)


def test_sample_with_the_network_in_bf16_or_compiled(monkeypatch):
    proc = BlurDiffusion(ProcessConfig(8, num_timesteps=10), backend="reference")
    torch.manual_seed(0)
    net = _Conv()

    def draw(**kw):
        return proc.sample(net, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3), guard=False, **kw)

    fp32 = draw()
    bf16 = draw(amp="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # the network ran in bf16 ...
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.05)  # ... within its rounding
    with pytest.raises(ValueError, match=r"--amp must be one of \['bf16', 'fp16', 'none'\], got 'fp8'"):
        draw(amp="fp8")

    monkeypatch.setattr(torch, "compile", cannot_compile)
    with pytest.warns(UserWarning, match="torch.compile failed here"):
        assert torch.equal(draw(compile=True), fp32)  # compile=True reaches the network: its fallback ran


def test_the_residual_reference_stays_in_float32_under_autocast():
    proc = BlurDiffusion(ProcessConfig(8, num_timesteps=10), backend="reference")  # matmuls: autocast would cast
    proc.data_stats = DataStatistics(1, [0.0] * 3, [0.5] * 3, torch.rand(8, 8, dtype=torch.float64) + 0.1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    residual = ReferenceResidual(lambda x, t: torch.zeros_like(x), proc)
    assert torch.equal(Autocast(residual, torch.bfloat16)(x, t), proc.reference_eps(x, t))
    assert residual(x.to("meta"), t.to("meta")).shape == x.shape  # a device type without autocast
