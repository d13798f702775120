"""The process families (blurdiff/families.py, docs/design.md §1): their tables against an independent
implementation of the papers' formulas, the paper's process unchanged, and every sampler on each
family on the exact Gaussian yardstick (blurdiff/gaussian_yardstick.py)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from independent import dct_basis, hoogeboom, rissanen

from blurdiff import BlurDiffusion, ProcessConfig
from blurdiff.gaussian_yardstick import exact_score, gaussian_distance, output_variance, power_law_spectrum
from blurdiff.samplers import SAMPLERS, Sampler
from blurdiff.statistics import DataStatistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILY_ARGS = {
    "hoogeboom": dict(basis="dct", family="hoogeboom", blur_sigma_max=10.0, d_min=0.001),
    "rissanen": dict(basis="dct", family="rissanen", blur_sigma_min=0.25, blur_sigma_max=12.0, noise_sigma=0.01),
}


@pytest.mark.parametrize("hw,N", [((16, 16), 1000), ((12, 20), 37)])
def test_hoogeboom_tables_are_the_papers(hw, N):
    H, W = hw
    p = BlurDiffusion(
        ProcessConfig(hw, num_timesteps=N, basis="dct", family="hoogeboom", blur_sigma_max=20.0, d_min=0.01)
    )
    a, s = hoogeboom(H, W, N, 20.0, 0.01)
    assert p.signal_scale.dtype == p.noise_std.dtype == torch.float64
    assert p.signal_scale.shape == p.noise_std.shape == (N + 1, H, W)
    np.testing.assert_allclose(p.signal_scale.numpy(), a, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.noise_std.numpy(), s, rtol=1e-12, atol=0)
    assert (p.signal_scale[0] == 1).all() and (p.noise_std[0] == 0).all()


@pytest.mark.parametrize("hw,N", [((32, 32), 1000), ((12, 20), 37)])
def test_rissanen_tables_are_the_papers(hw, N):
    H, W = hw
    p = BlurDiffusion(
        ProcessConfig(hw, num_timesteps=N, basis="dct", family="rissanen", blur_sigma_min=0.5, blur_sigma_max=24.0)
    )
    log_a, s = rissanen(H, W, N, 0.5, 24.0, 0.01)
    a = p.signal_scale.numpy()
    # exp(-700) turns a relative error e of the exponent into 700 e: compare the exponents where
    # the amplitude is a normal float64, and the rest as amplitudes (subnormal or 0).
    normal = a >= np.finfo(np.float64).tiny
    np.testing.assert_allclose(np.log(a[normal]), log_a[normal], rtol=1e-12, atol=0)
    np.testing.assert_allclose(a[~normal], np.exp(log_a[~normal]), rtol=0, atol=1e-310)
    np.testing.assert_allclose(p.noise_std.numpy(), s, rtol=1e-15, atol=0)
    # The finest frequencies' amplitude underflows float64; their log-SNR does not.
    assert (p.signal_scale[N, -1, -1] == 0).item() and torch.isfinite(p.log_A_bar).all()
    # The mean colour is never destroyed: its step is 1 exactly after the first.
    assert (p.signal_scale[:, 0, 0] == 1).all() and (p.A[2:, 0, 0] == 1).all() and (p.one_minus_A[2:, 0, 0] == 0).all()


@pytest.mark.parametrize("family", sorted(FAMILY_ARGS))
def test_q_sample_is_a_x0_plus_s_eps_in_the_dct_basis(family):
    H, W, N = 8, 12, 50
    p = BlurDiffusion(ProcessConfig((H, W), num_timesteps=N, **FAMILY_ARGS[family]), backend="reference")
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(3, 2, H, W, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([1, 20, N])
    Uh, Uw = dct_basis(H), dct_basis(W)
    a, s = p.signal_scale.numpy(), p.noise_std.numpy()
    want = np.empty((3, 2, H, W))
    for b in range(3):
        for c in range(2):
            xb = a[t[b]] * (Uh.T @ x0[b, c].numpy() @ Uw) + s[t[b]] * (Uh.T @ eps[b, c].numpy() @ Uw)
            want[b, c] = Uh @ xb @ Uw.T
    np.testing.assert_allclose(p.q_sample(x0, t, eps).numpy(), want, rtol=0, atol=1e-12)


def test_the_papers_process_is_unchanged():
    """lee: a = √Ā, s = √(1-Ā) exactly, and its config records no family fields (so its checkpoints
    are byte for byte those of before; tests/test_process.py holds the golden values)."""
    p = BlurDiffusion(ProcessConfig(16))
    assert p.family == "lee" and p.scale is None
    assert torch.equal(p.signal_scale, p.A_bar.sqrt()) and torch.equal(p.noise_std, p.one_minus_A_bar.sqrt())
    assert not {"family", "blur_sigma_max", "d_min", "blur_sigma_min", "noise_sigma"} & set(p.config.to_dict())
    assert ProcessConfig(16, basis="dct", family="hoogeboom").to_dict()["family"] == "hoogeboom"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(family="heat"), r"family must be one of \('lee', 'hoogeboom', 'rissanen'\), got 'heat'"),
        (dict(family="hoogeboom", blur_sigma_max=0.0), r"blur_sigma_max must lie in \(0, inf\]"),
        (dict(family="hoogeboom", d_min=1.0), r"d_min must lie in \[0, 1\), got 1.0"),
        (dict(family="hoogeboom", d_min=-0.1), r"d_min must lie in \[0, 1\), got -0.1"),
        (dict(family="rissanen", noise_sigma=-1.0), r"noise_sigma must lie in \(0, inf\]"),
        (dict(family="rissanen", noise_sigma=float("nan")), r"noise_sigma must be a finite number"),
        (dict(family="rissanen", blur_sigma_min=0.0), r"blur_sigma_min must lie in \(0, inf\]"),
        (dict(family="rissanen", blur_sigma_min=30.0), r"blur_sigma_min must be at most blur_sigma_max"),
    ],
)
def test_bad_family_values_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        ProcessConfig(8, basis="dct", num_timesteps=10, **kwargs)
    assert "\n" not in str(e.value)


def test_families_run_in_the_dct_basis():
    with pytest.raises(ValueError, match="the rissanen family runs in the DCT basis: set basis='dct'"):
        BlurDiffusion(ProcessConfig(8, family="rissanen"))


# --------------------------------------------------------------------------- every sampler, every family
RES = 8


def _process(family, **kw):
    if family == "ddpm":  # plain DDPM: identity basis, no blur
        return BlurDiffusion(ProcessConfig(RES, basis="identity", blur_schedule="none", f_max=0.0, **kw))
    if family == "lee":
        return BlurDiffusion(ProcessConfig(RES, **kw))
    return BlurDiffusion(ProcessConfig(RES, **FAMILY_ARGS[family], **kw))


FAMILIES = ("ddpm", "lee", "hoogeboom", "rissanen")


@pytest.mark.parametrize("family", ["hoogeboom", "rissanen"])
def test_prior_is_the_gaussian_of_the_data(family):
    """The other families start from N(0, a_N² v + s_N²) per frequency (rissanen's mean colour is
    never destroyed): with the data's own spectrum as reference, every integrator is exact, prior
    included; the prior's samples have that variance."""
    p = _process(family)
    v = power_law_spectrum((RES, RES))
    N = p.num_timesteps
    want = p.signal_scale[N] ** 2 * v + p.noise_std[N] ** 2
    torch.testing.assert_close(p.prior_std(v) ** 2, want, rtol=1e-12, atol=0)
    p.data_stats = DataStatistics(1, [0.0] * 3, [0.5] * 3, v)
    x = p.prior_sample((2000, 3, RES, RES), torch.Generator().manual_seed(0), dtype=torch.float64)
    tab = p.tables("cpu", torch.float64)
    emp = (tab["U_h"].T @ x @ tab["U_w"]).pow(2).mean(dim=(0, 1))
    assert ((emp / want - 1).abs() < 5 * math.sqrt(2 / 6000)).all()
    for kind in ("ancestral", "ancestral2m", "ddim", "ddim2m"):
        for K in (5, 50, N):
            var = output_variance(Sampler(p, K, kind, reference_var=v), v)
            assert gaussian_distance(var, v)["w2"] < 1e-12, (kind, K)


def _slope(counts, errors):
    x, y = torch.log(torch.tensor(counts, dtype=torch.float64)), torch.log(torch.tensor(errors, dtype=torch.float64))
    return float(-((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_converges_at_its_order(family):
    """tests/test_samplers.py's order test on every family: with a flat reference (a large residual
    to freeze or extrapolate), the distance to the same sampler on all N steps falls as 1/K (ancestral,
    ddim) or 1/K² (ancestral2m); every table is finite (rissanen's mean colour, whose log-SNR never
    moves, included) and Eq. 12 on all N steps lands within 5 % of the data's variance."""
    p = _process(family)
    v = power_law_spectrum((RES, RES))
    flat = torch.ones_like(v)
    counts = [25, 50, 100, 200]
    orders = {}
    for kind in ("ancestral", "ancestral2m", "ddim", "ddim2m"):
        at_n = output_variance(Sampler(p, p.num_timesteps, kind, reference_var=flat), v)
        errors = []
        for K in counts:
            s = Sampler(p, K, kind, reference_var=flat)
            assert all(torch.isfinite(t).all() for t in s.tables64.values() if t is not None), (kind, K)
            errors.append(gaussian_distance(output_variance(s, v), at_n)["w2"])
        orders[kind] = _slope(counts, errors)
    # Measured: first order 0.96 (ddpm, lee) to 1.28 (hoogeboom, rissanen: the distance is to the
    # sampler on N = 1000 steps, not to the limit); ancestral2m 1.99 to 2.59.
    assert 0.7 < orders["ancestral"] < 1.45 and 0.7 < orders["ddim"] < 1.45, orders
    assert 1.7 < orders["ancestral2m"] < 3.0 and orders["ancestral2m"] > orders["ancestral"] + 0.5, orders
    ddpm = Sampler(p, None, "ddpm", reference_var=v)
    assert ((output_variance(ddpm, v) / v - 1).abs() < 0.05).all()


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_no_sampler_diverges_on_gaussian_data(family, kind):
    """Monte Carlo: each implemented sampler, driven by the exact score of Gaussian data, stays finite
    and gives the variance the yardstick predicts (each frequency within 5σ of 1536 draws)."""
    p = _process(family, num_timesteps=100)
    v = power_law_spectrum((RES, RES))
    p.data_stats = DataStatistics(1, [0.0] * 3, [0.5] * 3, v)
    s = Sampler(p, None if kind == "ddpm" else 10, kind)
    x = s.sample(exact_score(p, v), (512, 3, RES, RES), generator=torch.Generator().manual_seed(1), guard=False)
    assert torch.isfinite(x).all()
    tab = p.tables("cpu", torch.float64)
    emp = (tab["U_h"].T @ x.double() @ tab["U_w"]).pow(2).mean(dim=(0, 1))
    ratio = emp / output_variance(s, v)
    assert ((ratio - 1).abs() < 5 * math.sqrt(2 / 1536)).all(), (float(ratio.min()), float(ratio.max()))


# --------------------------------------------------------------------------- settings, checkpoints, exports
def test_a_family_is_set_recorded_exported_and_sampled_like_its_checkpoint(tmp_path, capsys):
    """``--set process.family=…`` parses; a run of another family rebuilds from its checkpoint, its
    export and its diffusers export as that family (the same config), and samples bitwise alike."""
    import dataclasses

    from helpers import tiny_weights

    from blurdiff.checkpoint import build_from_checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
    from blurdiff.cli import main
    from blurdiff.export import export_run, load_export
    from blurdiff.settings import parse_settings

    sets = ["process.family=rissanen", "process.basis=dct", "process.noise_sigma=0.02", "process.num_timesteps=20"]
    process_cfg = dict(parse_settings(sets)["process"], resolution=16, blur_sigma_min=0.3, blur_sigma_max=4.0)
    assert process_cfg["family"] == "rissanen" and process_cfg["noise_sigma"] == 0.02
    process = BlurDiffusion(ProcessConfig(**process_cfg))
    model, ema = tiny_weights(1), tiny_weights(2)
    v = power_law_spectrum((16, 16))
    config = {
        "preset": "toy",
        "process": process.config.to_dict(),
        "unet": dataclasses.asdict(model.config),
        "train": {},
    }
    state = {"step": 5, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": {}, "config": config}
    state["data_stats"] = DataStatistics(3, [0.0] * 3, [0.5] * 3, v).to_state()
    save_checkpoint(state, checkpoint_path(tmp_path / "run", 5))

    ref_process, ref_model = build_from_checkpoint(load_checkpoint(checkpoint_path(tmp_path / "run", 5)))
    assert ref_process.config == process.config and ref_process.family == "rissanen"
    export_run(run=tmp_path / "run", out=tmp_path / "e")
    got_process, got_model = load_export(tmp_path / "e")
    assert got_process.config == process.config
    for kind, steps in (("ddpm", None), ("ancestral2m", 5)):
        with torch.no_grad():
            a = got_process.sample(
                got_model, (2, 3, 16, 16), torch.Generator().manual_seed(7), steps=steps, sampler=kind, guard=False
            )
            b = ref_process.sample(
                ref_model, (2, 3, 16, 16), torch.Generator().manual_seed(7), steps=steps, sampler=kind, guard=False
            )
        assert torch.equal(a, b), kind
    pytest.importorskip("diffusers")
    from blurdiff.diffusers_pipeline import BlurDiffusionPipeline

    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    pipe = BlurDiffusionPipeline.from_pretrained(str(tmp_path / "d"))
    assert pipe.scheduler.process.config == process.config
    assert torch.equal(pipe.scheduler.process.signal_scale, process.signal_scale)


def test_family_presets_differ_from_their_recipes_only_in_the_process():
    """toy-* and photos32-* of the other families: the toy's and the photos' network, optimiser and
    data order, the papers' 32x32 settings at 32x32, σ_B scaled with the side at 16x16."""
    from blurdiff.presets import get_preset

    def recipe(preset):
        return {k: v for k, v in dataclasses.asdict(preset).items() if k not in ("name", "process", "model_output")}

    for res, base, names in ((16, "toy", ("toy-noblur", "toy-lee", "toy-hoogeboom", "toy-rissanen")),
                             (32, "photos32-quartic", ("photos32-hoogeboom", "photos32-rissanen"))):  # fmt: skip
        for name in names:
            preset = get_preset(name)
            assert recipe(preset) == recipe(get_preset(base)), name
            process = BlurDiffusion(preset.process)
            assert process.resolution == (res, res)
            if process.family == "hoogeboom":
                assert process.config.blur_sigma_max == 20.0 * res / 32 and process.config.d_min == 0.001
            if process.family == "rissanen":
                assert (process.config.blur_sigma_min, process.config.blur_sigma_max) == (
                    0.5 * res / 32,
                    24.0 * res / 32,
                )
                assert process.config.noise_sigma == 0.01
            assert preset.model_output == "eps_residual", name  # one network output for every row of a part
    assert get_preset("toy-noblur").process.blur_schedule == "none"
    assert get_preset("toy-lee").process == get_preset("toy").process
