"""The diffusers integration (blurdiff/diffusers_scheduler.py, blurdiff/diffusers_pipeline.py).

Everything runs on tiny processes (8 x 8, 20 steps; 1000 steps where a diffusers scheduler's
default schedule is compared) and tiny networks, offline. Exact agreement is asserted bit for bit
(``torch.equal``) where both sides run the same ops in the same order; elsewhere the tolerance and
its reason are written beside the assertion.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import math
import re
import socket
import sys

import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from blurdiff.checkpoint import build_from_checkpoint, checkpoint_path, save_checkpoint  # noqa: E402
from blurdiff.diffusers_pipeline import BlurDiffusionPipeline, BlurDiffusionUNet  # noqa: E402
from blurdiff.diffusers_scheduler import (  # noqa: E402
    PROCESS_KEYS,
    BlurDiffusionScheduler,
    data_stats_to_config,
    process_config,
    to_diffusers_timestep,
    to_project_step,
)
from blurdiff.diffusion import X0_REG, BlurDiffusion, ProcessConfig, ReferenceResidual  # noqa: E402
from blurdiff.samplers import MULTISTEP, SAMPLERS, make_sampler  # noqa: E402
from blurdiff.statistics import estimate_data_statistics  # noqa: E402
from blurdiff.unet import build_unet  # noqa: E402

RES, STEPS = 8, 20
PROCESS = dict(num_train_timesteps=STEPS, resolution=RES, basis="gaussian", blur_schedule="quartic", f_max=0.140625)
#: The project's process with no blur in the identity basis: plain DDPM with diffusers' linear betas.
DDPM_LIKE = dict(num_train_timesteps=1000, resolution=RES, basis="identity", blur_schedule="none", f_max=0.0)
DIFFUSERS_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many small ops (see conftest.one_torch_thread)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may be downloaded: offline mode, and any socket connection fails loudly."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _images(n, seed=0):
    """Smooth images in [-1, 1] (a coarse random field, upsampled), so the spectrum is not flat."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, RES // 2, RES // 2, generator=g)
    return torch.tanh(torch.nn.functional.interpolate(coarse, size=(RES, RES), mode="bilinear"))


def _stats(process):
    return estimate_data_statistics(process, [_images(32, seed=5)])


def _project_unet(seed=1):
    net = build_unet("tiny", image_size=RES, channel_mult=(1, 1), attention_ds=(2,))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the last conv starts at zero: give ε some signal
        for p in net.out.parameters():
            p.normal_(0, 0.05, generator=g)
    return net.eval()


def _diffusers_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=RES,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def _scheduler(**overrides):
    sched = BlurDiffusionScheduler(**PROCESS, **overrides)
    if "data_stats" not in overrides:
        sched = BlurDiffusionScheduler(**PROCESS, data_stats=_stats(sched.process), **overrides)
    return sched


def _pipeline(unet, scheduler):
    pipe = BlurDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _public(config):
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- timesteps
def test_timestep_mapping_is_one_apart():
    """diffusers t_d = project s - 1, in the helpers, the schedule and add_noise."""
    assert to_project_step(0) == 1 and to_diffusers_timestep(STEPS) == STEPS - 1
    assert torch.equal(to_project_step(torch.tensor([0, 7])), torch.tensor([1, 8]))
    sched = _scheduler()
    assert sched.timesteps.tolist() == list(range(STEPS - 1, -1, -1))  # before set_timesteps: all of them
    for kind, K in [(None, None), ("ddpm", STEPS), ("ancestral", 7), ("ancestral2m", 5), ("ddim", 3), ("ddim2m", 1)]:
        s = BlurDiffusionScheduler.from_config(sched.config, sampler=kind)
        s.set_timesteps(K)
        sampler = make_sampler(s.process, K, kind)
        assert s.timesteps.dtype == torch.int64
        assert s.timesteps.tolist() == [step - 1 for step in sampler.timesteps]
        assert s.sampler.name == sampler.name and s.num_inference_steps == sampler.K
    sched.set_timesteps(timesteps=[19, 10, 3])  # explicit, diffusers numbering
    assert sched.sampler.timesteps == (20, 11, 4)

    g = torch.Generator().manual_seed(0)
    x0, noise = _images(4), torch.randn(4, 3, RES, RES, generator=g)
    t_d = torch.tensor([0, 1, 10, STEPS - 1])
    # One fused op at s = t_d + 1: bitwise the process's own q_sample.
    assert torch.equal(sched.add_noise(x0, noise, t_d), sched.process.q_sample(x0, t_d + 1, noise))
    full = torch.full((4,), 5, dtype=torch.int64)
    assert torch.equal(sched.add_noise(x0, noise, 5), sched.process.q_sample(x0, full + 1, noise))
    assert torch.equal(sched.add_noise(x0, noise, torch.tensor(5)), sched.process.q_sample(x0, full + 1, noise))


def test_prior_is_the_process_prior_and_model_input_is_unscaled():
    sched = _scheduler()
    assert sched.init_noise_sigma == 1.0 and sched.order == 1
    a = sched.prior_sample((3, 3, RES, RES), torch.Generator().manual_seed(4))
    b = sched.process.prior_sample((3, 3, RES, RES), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    # Not isotropic: under blur the prior's variance per frequency is 1 - Ā_N, which differs
    # between frequencies (so randn * init_noise_sigma would be the wrong start).
    var = sched.process.one_minus_A_bar[STEPS]
    assert var.max() - var.min() > 0.05
    x = torch.randn(2, 3, RES, RES)
    assert sched.scale_model_input(x, 3) is x


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "K, kind, output",
    [(None, "ddpm", "eps"), (None, "ddpm", "eps_residual"), (6, "ancestral2m", "eps"), (6, "ddim", "eps"),
     (6, "ddim2m", "eps_residual")],
)  # fmt: skip
def test_pipeline_reproduces_project_sampler_bitwise(K, kind, output):
    """Same generator, same samples, bit for bit: the pipeline draws the prior and each step's
    noise from the generator in the same order as Sampler.sample, and each step is the same
    spectral_lincomb on the same inputs (the network sees the same project step s = t_d + 1)."""
    sched = _scheduler(sampler=kind)
    net = _project_unet()
    pipe = _pipeline(BlurDiffusionUNet.from_unet(net, model_output=output), sched)
    model = ReferenceResidual(net, sched.process) if output == "eps_residual" else net
    ref = make_sampler(sched.process, K, kind).sample(
        model, (2, 3, RES, RES), generator=torch.Generator().manual_seed(7), guard=False
    )
    got = pipe(batch_size=2, num_inference_steps=K, generator=torch.Generator().manual_seed(7), output_type="latent")
    assert torch.equal(got.images, ref)
    pt = pipe(batch_size=2, num_inference_steps=K, generator=torch.Generator().manual_seed(7), output_type="pt")
    assert torch.equal(pt.images, (ref / 2 + 0.5).clamp(0, 1))
    (pil,) = pipe(batch_size=1, num_inference_steps=K, output_type="pil", return_dict=False)
    assert pil[0].size == (RES, RES)


def test_pipeline_guards_its_samples():
    """A network whose ε is far off gives diverged samples: the pipeline warns, naming the sampler,
    as every sampler of the project does."""
    from blurdiff.sample_guard import SamplesDivergedWarning

    net = _project_unet()
    with torch.no_grad():  # an ε hundreds of times too large
        for param in net.out.parameters():
            param.fill_(3.0)
    pipe = _pipeline(BlurDiffusionUNet.from_unet(net), _scheduler(sampler="ancestral"))
    with pytest.warns(SamplesDivergedWarning, match="Sampler\\(sampler='ancestral', K=5"):
        pipe(batch_size=2, num_inference_steps=5, output_type="latent")


@pytest.mark.parametrize("kind", SAMPLERS)
def test_scheduler_loop_reproduces_sampler_and_predicts_x0(kind):
    """A hand-written diffusers loop (set_timesteps, step) over every kind, with a network-free ε
    (so the steps are all that is compared): bitwise Sampler.sample; pred_original_sample is the
    process's x̂_0 at the current step."""
    sched = _scheduler(sampler=kind)
    K = None if kind == "ddpm" else 5
    N = sched.process.num_timesteps

    def eps_fn(x, s):  # deterministic, depends on x and the project step
        return 0.7 * x + 0.02 * s.to(x.dtype)[:, None, None, None]

    ref = make_sampler(sched.process, K, kind).sample(
        eps_fn, (2, 3, RES, RES), torch.Generator().manual_seed(3), guard=False
    )
    g = torch.Generator().manual_seed(3)
    sched.set_timesteps(K)
    x = sched.prior_sample((2, 3, RES, RES), g)
    for t in sched.timesteps:
        s = torch.full((2,), int(t) + 1, dtype=torch.int64)
        eps = eps_fn(x, s)
        out = sched.step(eps, t, x, generator=g)
        assert torch.equal(out.pred_original_sample, sched.process.predict_x0(x, eps, s))
        x = out.prev_sample
    assert torch.equal(x, ref)
    assert (sched.sampler.K == N) == (kind == "ddpm")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sampler must be None or one of"):
        BlurDiffusionScheduler(**PROCESS, sampler="euler")
    with pytest.raises(ValueError, match="spacing must be"):
        BlurDiffusionScheduler(**PROCESS, spacing="random")
    with pytest.raises(ValueError, match="prediction_type"):
        BlurDiffusionScheduler(**PROCESS, prediction_type="v_prediction")
    sched = _scheduler()
    x = torch.zeros(2, 3, RES, RES)
    with pytest.raises(ValueError, match="call set_timesteps before step"):
        sched.step(x, STEPS - 1, x)
    for K in (0, STEPS + 1):
        with pytest.raises(ValueError, match=f"num_inference_steps must lie in 1 … {STEPS}"):
            sched.set_timesteps(K)
    with pytest.raises(ValueError, match="integer"):
        sched.set_timesteps(2.5)
    with pytest.raises(ValueError, match=f"include {STEPS - 1}"):
        sched.set_timesteps(timesteps=[10, 5, 0])
    with pytest.raises(ValueError, match="ddpm sampler .* runs only with all"):
        BlurDiffusionScheduler.from_config(sched.config, sampler="ddpm").set_timesteps(5)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep 18 is not in this schedule"):
        sched.step(x, 18, x)
    with pytest.raises(ValueError, match="multistep"):  # ancestral2m: the second step first
        sched.step(x, sched.timesteps[1], x)
    with pytest.raises(ValueError, match=r"timesteps must lie in 0 … 19 \(diffusers numbering"):
        sched.add_noise(x, x, torch.tensor([0, STEPS]))
    with pytest.raises(ValueError, match="timesteps must be integers"):
        sched.add_noise(x, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="data_stats does not fit"):
        BlurDiffusionScheduler(**{**PROCESS, "resolution": 4}, data_stats=sched.config.data_stats)
    unet = BlurDiffusionUNet.from_unet(_project_unet(), model_output="eps_residual")
    with pytest.raises(ValueError, match="pass process=scheduler.process"):
        unet(x, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="output_type"):
        _pipeline(unet, sched)(output_type="jpeg")


# ----------------------------------------------------------------------------- training
def test_diffusers_training_loop_with_unet2dmodel():
    """The diffusers recipe (add_noise at t_d ~ U{0 … N-1}, MSE on ε) trains diffusers' own
    UNet2DModel on the blur process; the trained model then samples through the pipeline."""
    sched = _scheduler()
    unet = _diffusers_unet()
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0 = _images(16, seed=1)
    noise = torch.randn(x0.shape, generator=g)
    t_d = torch.randint(0, sched.config.num_train_timesteps, (16,), generator=g)

    def loss_fn():
        x_t = sched.add_noise(x0, noise, t_d)
        return torch.nn.functional.mse_loss(unet(x_t, t_d).sample, noise)

    before = [p.detach().clone() for p in unet.parameters()]
    losses = []
    for _ in range(40):  # one fixed batch: the loss must fall
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_fn().item()
    assert all(math.isfinite(v) for v in losses) and math.isfinite(final)
    # Measured: 1.15 -> 0.21 (Adam, 40 steps); a network that learnt nothing of x_t stays near 1 (ε has unit variance).
    assert final < 0.5 * losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters()))

    pipe = _pipeline(unet.eval(), sched)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, RES, RES, 3) and bool(torch.isfinite(torch.from_numpy(images.images)).all())


# ----------------------------------------------------------------------------- vs diffusers' DDPM / DDIM
def test_identity_no_blur_has_ddpm_schedule_and_add_noise():
    """Identity basis, no blur, linear betas 1e-4 … 0.02: DDPMScheduler's process."""
    sched = BlurDiffusionScheduler(**DDPM_LIKE)
    ddpm = DDPMScheduler(**DIFFUSERS_BETAS, clip_sample=False)
    a_bar = sched.process.A_bar[1:, 0, 0]  # project steps 1 … N = diffusers timesteps 0 … N-1
    assert bool((sched.process.A_bar[1:] == sched.process.A_bar[1:, :1, :1]).all())  # the same at every frequency
    # diffusers multiplies 1000 float32 factors; the project sums logs in float64. Measured 3.6e-7 relative.
    assert torch.allclose(ddpm.alphas_cumprod.double(), a_bar, rtol=2e-6, atol=0)
    ddpm.set_timesteps(1000)
    sched.set_timesteps(1000)
    assert torch.equal(ddpm.timesteps, sched.timesteps)

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, RES, RES, generator=g), torch.randn(4, 3, RES, RES, generator=g)
    t_d = torch.tensor([0, 1, 500, 999])
    # float32: diffusers forms 1 - ᾱ in float32, which at t_d = 0 (1 - ᾱ = 1e-4) keeps only ~3
    # digits of √(1 - ᾱ); the project takes it from expm1 in float64. Measured 3.1e-6 on |x| < 4.5.
    assert torch.allclose(sched.add_noise(x0, noise, t_d), ddpm.add_noise(x0, noise, t_d), rtol=0, atol=2e-5)
    # The same formula, given the same ᾱ in float64: agreement to float64 rounding.
    ddpm.alphas_cumprod = a_bar.clone()
    x0, noise = x0.double(), noise.double()
    assert torch.allclose(sched.add_noise(x0, noise, t_d), ddpm.add_noise(x0, noise, t_d), rtol=0, atol=1e-12)


def test_identity_ddpm_step_is_ddpm_to_first_order():
    """The project's ddpm kind (the paper's Eq. 12) is DDPM's step with σ² = β (fixed_large) up to
    the O(β²) terms of 1/√α = 2 - √α + O(β²) (docs/sampling.md §2). With the same ᾱ, x, ε and z in
    float64 the difference is exactly -(1-√α)²/√α x + β(1/√α - 1)/√(1-ᾱ) ε, up to rounding."""
    sched = BlurDiffusionScheduler(**DDPM_LIKE)
    ddpm = DDPMScheduler(**DIFFUSERS_BETAS, clip_sample=False, variance_type="fixed_large")
    a_bar = sched.process.A_bar[1:, 0, 0]
    ddpm.alphas_cumprod = a_bar.clone()
    sched.set_timesteps(1000)
    ddpm.set_timesteps(1000)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, RES, RES, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, RES, RES, generator=g, dtype=torch.float64)
    gaps = []
    for t in (999, 500, 1, 0):
        ours = sched.step(
            eps, t, x, noise=torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        )
        theirs = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        alpha = a_bar[t] / (a_bar[t - 1] if t > 0 else 1.0)
        beta = 1 - alpha
        expected = (
            -((1 - alpha.sqrt()) ** 2) / alpha.sqrt() * x + beta * (1 / alpha.sqrt() - 1) / (1 - a_bar[t]).sqrt() * eps
        )
        gap = ours.prev_sample - theirs.prev_sample
        assert torch.allclose(gap, expected, rtol=0, atol=1e-12), (t, (gap - expected).abs().max())
        # x̂_0: the same but for the project's regularisation (X0_REG) where Ā is tiny (2.5 % at t_d = 999).
        shrink = a_bar[t] / (a_bar[t] + X0_REG * (1 - a_bar[t]))
        assert torch.allclose(ours.pred_original_sample, shrink * theirs.pred_original_sample, rtol=1e-12, atol=1e-12)
        gaps.append(gap.abs().max().item())
    assert gaps[0] > 1e-5  # not the same formula: the first-order difference is visible at β = 0.02


def test_identity_ddim_matches_ddim_scheduler():
    """The ddim kind is the probability-flow ODE integrated around a Gaussian reference of power v
    per frequency; textbook DDIM (η = 0) is its v → ∞ limit (docs/sampling.md §4), reached to
    float64 rounding at v = 1e20 (the relative gap is O(1/(v Ā_N)) ≈ 3e-16). With no data
    statistics the reference is v = 1, which is a different sampler (asserted below)."""
    stats = dict(count=1, channel_mean=[0.0] * 3, channel_std=[1.0] * 3, spectral_power=[[1e20] * RES] * RES)
    sched = BlurDiffusionScheduler(**DDPM_LIKE, sampler="ddim", data_stats=stats)
    ddim = DDIMScheduler(**DIFFUSERS_BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ddim.set_timesteps(10)  # 999, 899, …, 99, then ᾱ = 1: the project's kept steps 1000 … 100 and s_0 = 0
    sched.set_timesteps(timesteps=ddim.timesteps)
    assert torch.equal(sched.timesteps, ddim.timesteps)
    unet = _diffusers_unet(seed=2).eval()

    def run(scheduler, x, model):
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t).sample, t, x).prev_sample
        return x

    x_T = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    ours, theirs = run(sched, x_T, unet), run(ddim, x_T, unet)
    # float32: diffusers' float32 ᾱ (3.6e-7 relative off, previous test) through 10 steps and the network.
    # Measured 2.3e-7 of max |x|; 10x that allowed.
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 2e-6 * scale
    # float64, the same ᾱ on both sides: the same step to rounding (measured 5e-16 of max |x|).
    ddim.alphas_cumprod = sched.process.A_bar[1:, 0, 0].clone()
    unet64 = unet.double()
    ours, theirs = run(sched, x_T.double(), unet64), run(ddim, x_T.double(), unet64)
    assert (ours - theirs).abs().max() <= 1e-12 * theirs.abs().max()

    flat = BlurDiffusionScheduler(
        **DDPM_LIKE, sampler="ddim", data_stats={**stats, "spectral_power": [[1.0] * RES] * RES}
    )
    flat.set_timesteps(timesteps=ddim.timesteps)
    assert (run(flat, x_T.double(), unet64) - theirs).abs().max() > 0.1 * theirs.abs().max()  # measured 0.98


# ----------------------------------------------------------------------------- save / load
@pytest.fixture
def diffusers_log():
    """What diffusers logs during the test (its loggers do not propagate to pytest's)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def test_save_and_load_pretrained_round_trip(tmp_path, diffusers_log):
    """save_pretrained -> from_pretrained from a local folder: the same configs, the same weights
    (safetensors), bitwise the same samples with the same generator; without diffusers' advice to
    install accelerate on every load."""
    sched = _scheduler(sampler="ddim2m", spacing="logsnr")
    pipe = _pipeline(BlurDiffusionUNet.from_unet(_project_unet(), model_output="eps_residual"), sched)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "scheduler" / "scheduler_config.json").is_file()

    loaded = BlurDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet) is BlurDiffusionUNet and type(loaded.scheduler) is BlurDiffusionScheduler
    assert _public(loaded.scheduler.config) == _public(sched.config)
    assert _public(loaded.unet.config) == _public(pipe.unet.config)
    assert loaded.unet.config.model_output == "eps_residual"
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), name
    # The data statistics went through JSON as Python floats: float64 exactly.
    assert torch.equal(loaded.scheduler.process.data_stats.spectral_power, sched.process.data_stats.spectral_power)
    assert torch.equal(loaded.scheduler.process.A_bar, sched.process.A_bar)
    for K in (None, 4):
        a = pipe(batch_size=2, num_inference_steps=K, generator=torch.Generator().manual_seed(9), output_type="latent")
        b = loaded(
            batch_size=2, num_inference_steps=K, generator=torch.Generator().manual_seed(9), output_type="latent"
        )
        assert torch.equal(a.images, b.images)

    # The network alone: ModelMixin's save and load.
    pipe.unet.save_pretrained(tmp_path / "unet-alone")
    alone = BlurDiffusionUNet.from_pretrained(tmp_path / "unet-alone")
    x, t = torch.randn(2, 3, RES, RES), torch.tensor([0, STEPS - 1])
    with torch.no_grad():
        assert torch.equal(alone(x, t, process=sched.process).sample, pipe.unet(x, t, process=sched.process).sample)

    # A pipeline around a diffusers network saves and loads as well (bitwise thanks to own_storage:
    # without it the reloaded UNet2DModel's samples were 3e-7 off).
    other = _pipeline(_diffusers_unet(), sched)
    other.save_pretrained(tmp_path / "other")
    again = BlurDiffusionPipeline.from_pretrained(tmp_path / "other")
    again.set_progress_bar_config(disable=True)
    a = other(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="latent")
    b = again(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="latent")
    assert type(again.unet) is UNet2DModel and torch.equal(a.images, b.images)
    assert not [m for m in diffusers_log if "accelerate" in m]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda w: w.pop("net.out.2.bias"),
            "do not fit the network its config describes: 1 missing (first out.2.bias)",
        ),
        (lambda w: w.update({"net.out.2.bias": w["net.out.2.bias"].to(torch.int32)}), "are not floating point"),
        (lambda w: w["net.out.2.bias"].fill_(float("nan")), "are not finite (NaN or inf in 1 of"),
        (None, "do not fit the network its config describes: "),  # config.json asks for a wider network
    ],
    ids=["missing", "int32", "nan", "wider"],
)
def test_a_tampered_folder_is_refused_by_the_checks_of_an_export(change, message, tmp_path):
    """What ``blurdiff sample --export`` refuses (blurdiff.unet.check_weights), from_pretrained refuses
    too, before building the network: diffusers alone logs a missing tensor, casts int32 and loads NaN."""
    _pipeline(BlurDiffusionUNet.from_unet(_project_unet()), _scheduler()).save_pretrained(tmp_path)
    weights_path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    if change is None:
        config = tmp_path / "unet" / "config.json"
        config.write_text(config.read_text().replace('"model_channels": 32', '"model_channels": 64'))
    else:
        weights = load_file(str(weights_path))
        change(weights)
        save_file(weights, str(weights_path))
    for load in (
        lambda: BlurDiffusionPipeline.from_pretrained(tmp_path),
        lambda: BlurDiffusionUNet.from_pretrained(tmp_path / "unet"),
    ):
        with pytest.raises(ValueError, match=re.escape(f"{weights_path}: the weights {message}")):
            load()


def test_scheduler_config_round_trips_float64_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    power = torch.rand(RES, RES, generator=g, dtype=torch.float64) * 3.0 + 1e-7  # full-precision float64 values
    stats = dict(count=7, channel_mean=[0.1 + 0.2, -1 / 3, math.pi / 10], channel_std=[math.e / 5, 0.3, 2**-40],
                 spectral_power=power.tolist())  # fmt: skip
    sched = BlurDiffusionScheduler(
        **{**PROCESS, "sigma": 0.1 + 0.3, "f_max": 1 / 7, "resolution": (RES, RES)}, data_stats=stats
    )
    sched.save_pretrained(tmp_path)
    loaded = BlurDiffusionScheduler.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(sched.config)
    assert loaded.config.resolution == [RES, RES] and loaded.config.sigma == 0.1 + 0.3
    assert torch.equal(loaded.process.data_stats.spectral_power, power)
    assert loaded.process.data_stats.channel_mean == stats["channel_mean"]
    assert torch.equal(loaded.process.A_bar, sched.process.A_bar)
    # from_process: the same config as the process's own arguments.
    again = BlurDiffusionScheduler.from_process(sched.process, spacing=None)
    assert _public(again.config) == _public(sched.config)
    assert data_stats_to_config(again.process.data_stats) == sched.config.data_stats


def test_a_scheduler_config_of_blurdiff_0_1_keeps_its_sampler(tmp_path):
    """0.1 saved the sampler as ``sampler_kind``; diffusers would drop that key with a log line."""
    BlurDiffusionScheduler(**PROCESS, sampler="ddim").save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["sampler_kind"] = config.pop("sampler")
    path.write_text(json.dumps(config))
    loaded = BlurDiffusionScheduler.from_pretrained(tmp_path)
    assert loaded.config.sampler == "ddim"
    loaded.set_timesteps(5)
    assert loaded.sampler.name == "ddim"


def test_scheduler_config_holds_every_process_field():
    """The scheduler's config is the ProcessConfig (N named num_train_timesteps): every field is an
    argument of the scheduler, a config must hold the paper's process's record (PROCESS_KEYS), and
    the process built from its config is the one it was given."""
    params = inspect.signature(BlurDiffusionScheduler.__init__).parameters
    names = {"num_train_timesteps" if f.name == "num_timesteps" else f.name for f in dataclasses.fields(ProcessConfig)}
    assert names <= set(params) and set(PROCESS_KEYS) == set(ProcessConfig().to_dict()) - {"num_timesteps"} | {
        "num_train_timesteps"
    }
    config = ProcessConfig(
        resolution=(RES, RES + 4), basis="dct", sigma=0.3, f_max=0.2, num_timesteps=17, eig_floor=0.05
    )
    sched = BlurDiffusionScheduler.from_process(BlurDiffusion(config))
    assert sched.config.num_train_timesteps == 17 and process_config(sched.config) == config == sched.process.config


def test_not_interchangeable_with_isotropic_schedulers():
    """What can be asserted: no diffusers scheduler is declared compatible with this one (either
    way round), and this one refuses another scheduler's config. diffusers' own from_config, on
    the other hand, accepts any config (it ignores unknown keys with a logged warning), so
    ``DDPMScheduler.from_config(blur.config)`` builds a plain DDPMScheduler; that it is not listed
    as compatible is what tells a user (and diffusers' scheduler swapping) not to do it."""
    sched = _scheduler()
    assert BlurDiffusionScheduler._compatibles == [] and sched.compatibles == []
    assert BlurDiffusionScheduler not in DDPMScheduler().compatibles
    assert BlurDiffusionScheduler not in DDIMScheduler().compatibles
    with pytest.raises(ValueError, match="does not describe a blur process"):
        BlurDiffusionScheduler.from_config(DDPMScheduler().config)
    ddpm_loaded_config = {
        **DDPMScheduler().config,
        "_class_name": "DDPMScheduler",
        "resolution": RES,
        "basis": "identity",
    }
    with pytest.raises(ValueError, match="a DDPMScheduler config"):
        BlurDiffusionScheduler.from_config(ddpm_loaded_config)
    with pytest.raises(ValueError, match="needs a BlurDiffusionScheduler"):
        BlurDiffusionPipeline(unet=_diffusers_unet(), scheduler=DDPMScheduler())


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("output", ["eps", "eps_residual"])
def test_from_checkpoint_samples_like_the_project(tmp_path, output):
    sched = _scheduler()
    model, ema = _project_unet(1), _project_unet(2)
    process_cfg = {k: v for k, v in PROCESS.items() if k != "num_train_timesteps"}
    state = {
        "step": 10,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": {},
        "config": {
            "preset": "toy",
            "process": {**process_cfg, "num_timesteps": STEPS},
            "unet": dict(vars(model.config)),
            "model_output": output,
            "train": {},
        },
        "data_stats": sched.process.data_stats.to_state(),
    }
    save_checkpoint(state, checkpoint_path(tmp_path, 10))
    process, net = build_from_checkpoint(state)
    ref = make_sampler(process, 5).sample(net, (2, 3, RES, RES), torch.Generator().manual_seed(2), guard=False)
    for source in (state, checkpoint_path(tmp_path, 10), tmp_path):  # a state, a file, a run folder
        pipe = BlurDiffusionPipeline.from_checkpoint(source)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.unet.config.model_output == output and not pipe.unet.training
        got = pipe(
            batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(2), output_type="latent"
        )
        assert torch.equal(got.images, ref)
    raw = BlurDiffusionPipeline.from_checkpoint(state, use_ema=False)
    assert torch.equal(raw.unet.net.out[2].weight, model.out[2].weight)


# ----------------------------------------------------------------------------- without diffusers
@pytest.mark.parametrize("module", ["blurdiff.diffusers_scheduler", "blurdiff.diffusers_pipeline"])
def test_import_without_diffusers_says_how_to_install(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    for name in ("blurdiff.diffusers_scheduler", "blurdiff.diffusers_pipeline"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r'pip install "blurdiff\[diffusers\]".*Python >= 3\.11'):
        importlib.import_module(module)


def test_multistep_history_is_reset_by_set_timesteps():
    """The multistep kinds keep (x, ε) of the previous step; a new schedule starts without it, so
    two runs from the same start give the same samples."""
    sched = _scheduler(sampler="ancestral2m")
    assert "ancestral2m" in MULTISTEP

    def run():
        g = torch.Generator().manual_seed(5)
        sched.set_timesteps(4)
        x = sched.prior_sample((1, 3, RES, RES), g)
        for t in sched.timesteps:
            x = sched.step(0.5 * x, t, x, generator=g).prev_sample
        return x

    assert torch.equal(run(), run())


@pytest.mark.parametrize(
    "family",
    [dict(family="hoogeboom", blur_sigma_max=3.0, d_min=0.01),
     dict(family="rissanen", blur_sigma_min=0.3, blur_sigma_max=4.0, noise_sigma=0.02)],
)  # fmt: skip
def test_every_family_round_trips_and_samples_like_the_project(tmp_path, family):
    """The scheduler of another process family (docs/design.md §1): its config saves and loads as
    that family, from_process gives the same config, and the pipeline samples bitwise like the
    project's sampler (the prior is the data's Gaussian, drawn from the same generator)."""
    cfg = {**PROCESS, "basis": "dct", **family}
    sched = BlurDiffusionScheduler(**cfg, sampler="ancestral2m")
    sched = BlurDiffusionScheduler(**cfg, sampler="ancestral2m", data_stats=_stats(sched.process))
    sched.save_pretrained(tmp_path)
    loaded = BlurDiffusionScheduler.from_pretrained(tmp_path)
    assert loaded.process.config == sched.process.config and loaded.process.family == family["family"]
    assert torch.equal(loaded.process.noise_std, sched.process.noise_std)
    assert _public(BlurDiffusionScheduler.from_process(sched.process, "ancestral2m").config) == _public(sched.config)
    net = _project_unet()
    ref = make_sampler(sched.process, 6, "ancestral2m").sample(
        net, (2, 3, RES, RES), generator=torch.Generator().manual_seed(7), guard=False
    )
    pipe = _pipeline(BlurDiffusionUNet.from_unet(net), loaded)
    got = pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(7), output_type="latent")
    assert torch.equal(got.images, ref)
    with pytest.raises(ValueError, match=r"d_min must lie in \[0, 1\), got 1.5"):
        BlurDiffusionScheduler(**{**cfg, "d_min": 1.5})
