"""Tests for the ADM UNet (blurdiff/unet.py): the paper's size, shapes, init, training signal."""

import dataclasses

import pytest
import torch

from blurdiff.unet import UNET_PRESETS, UNet, UNetConfig, build_unet, timestep_embedding

PAPER_PARAMS = 121.06e6  # Lee et al. 2022, Appendix B


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add noise to every parameter so the zero-initialised layers stop hiding the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_unet("tiny")


def batch(b=4, size=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=gen)
    t = torch.randint(0, 1001, (b,), generator=gen)
    return x, t


# --- the paper's model ----------------------------------------------------------------------


def test_adm_lsun64_param_count_matches_paper():
    with torch.device("meta"):  # no memory, no init cost
        model = build_unet("adm-lsun64")
    count = n_params(model)
    assert abs(count - PAPER_PARAMS) / PAPER_PARAMS < 0.005, count


@pytest.mark.slow  # ~2 s idle, 6+ s when the two cores are shared
def test_adm_lsun64_forward_shape():
    torch.manual_seed(0)
    model = build_unet("adm-lsun64")
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([1, 1000])
    with torch.no_grad():
        y = model(x, t)
    assert y.shape == (2, 3, 64, 64)
    assert y.dtype == x.dtype


# --- tiny: shapes and init -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 3, 16, 16), (1, 3, 16, 24)])
def test_tiny_output_shape(tiny, shape):
    x = torch.randn(shape)
    t = torch.randint(0, 1001, (shape[0],))
    assert tiny(x, t).shape == shape


def test_tiny_param_count_is_cpu_sized(tiny):
    assert 0.5e6 <= n_params(tiny) <= 2e6


def test_fresh_model_outputs_exact_zeros(tiny):
    x, t = batch()
    y = tiny(x, t)
    assert torch.equal(y, torch.zeros_like(x))


def test_one_step_makes_output_nonzero_and_gradients_reach_first_conv(tiny):
    x, t = batch()
    eps = torch.randn_like(x)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)  # Adam works too; its first step imports dynamo (~1 s)

    loss = (tiny(x, t) - eps).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()

    y = tiny(x, t)
    assert y.abs().max() > 0

    # Only the final conv moved in step one; now the signal must flow back to the stem.
    (y - eps).pow(2).mean().backward()
    stem = tiny.input_blocks[0][0]
    assert isinstance(stem, torch.nn.Conv2d)
    assert stem.weight.grad is not None
    assert torch.isfinite(stem.weight.grad).all()
    assert stem.weight.grad.abs().max() > 0


def test_timestep_changes_output(tiny):
    perturb(tiny)
    x, _ = batch(b=2)
    y1 = tiny(x, torch.tensor([10, 10]))
    y2 = tiny(x, torch.tensor([900, 900]))
    assert not torch.allclose(y1, y2, atol=1e-5)
    # And the same t gives the same output (the difference is the embedding, not noise).
    assert torch.equal(y1, tiny(x, torch.tensor([10, 10])))


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos(0), sin(0)
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(7.0)))  # frequency 1 first
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)  # odd dim padded


# --- input validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape, t_shape, match",
    [
        ((3, 32, 32), (3,), r"\bx\b.*4-D"),  # missing batch dim
        ((2, 1, 3, 32, 32), (2,), r"\bx\b.*4-D"),
        ((2, 1, 32, 32), (2,), r"\bx\b.*channels"),
        ((2, 3, 30, 32), (2,), r"\bx\b.*divisible"),
        ((2, 3, 32, 32), (), r"\bt\b.*\[B\]"),  # scalar t
        ((2, 3, 32, 32), (3,), r"\bt\b.*\[B\]"),  # wrong length
        ((2, 3, 32, 32), (2, 1), r"\bt\b.*\[B\]"),  # column vector
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(tiny, x_shape, t_shape, match):
    x = torch.randn(x_shape)
    t = torch.zeros(t_shape, dtype=torch.int64)
    with pytest.raises(ValueError, match=match):
        tiny(x, t)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="adm-lsun64.*tiny"):
        build_unet("adm-lsun128")


def test_unknown_override_lists_valid_ones():
    with pytest.raises(ValueError, match="model_chanels.*model_channels"):
        build_unet("tiny", model_chanels=64)


def test_bad_configs_rejected():
    with pytest.raises(ValueError, match="attention_ds"):
        build_unet("tiny", attention_ds=(16,))  # tiny only goes down to ds 4
    with pytest.raises(ValueError, match="divisible by 32"):
        build_unet("tiny", model_channels=48)
    with pytest.raises(ValueError, match="num_heads"):
        build_unet("tiny", num_heads=3)


# --- config round trip ------------------------------------------------------------------------


def test_config_round_trips_through_asdict(tiny):
    d = dataclasses.asdict(tiny.config)
    # As if it came back from JSON: tuples turned into lists.
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    rebuilt = UNet(UNetConfig(**d))
    assert rebuilt.config == tiny.config == UNET_PRESETS["tiny"]
    perturb(tiny)
    rebuilt.load_state_dict(tiny.state_dict())
    x, t = batch(b=2)
    assert torch.equal(rebuilt(x, t), tiny(x, t))


def test_presets_are_not_mutated_by_overrides():
    build_unet("tiny", dropout=0.3)
    assert UNET_PRESETS["tiny"].dropout == 0.0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(resblock_updown=True),
        dict(conv_resample=False),
        dict(use_scale_shift_norm=False),
        dict(num_head_channels=16, attention_ds=(2, 4)),
    ],
    ids=["resblock_updown", "no_conv_resample", "additive_emb", "head_channels"],
)
def test_variants_keep_shape_and_use_time(overrides):
    torch.manual_seed(0)
    model = build_unet("tiny", **overrides)
    perturb(model)
    x, _ = batch(b=2, size=16)
    y1 = model(x, torch.tensor([5, 5]))
    y2 = model(x, torch.tensor([500, 500]))
    assert y1.shape == x.shape
    assert not torch.allclose(y1, y2, atol=1e-5)


# --- mixed precision and checkpointing --------------------------------------------------------


def test_bf16_autocast_forward_is_finite_and_close(tiny):
    perturb(tiny)
    x, t = batch()
    seen = []
    hook = tiny.input_blocks[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        ref = tiny(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = tiny(x, t)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # autocast really ran the convs in bf16
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()
    rel = (y - ref).norm() / ref.norm()
    assert 0 < rel < 0.1, rel


def test_gradient_checkpointing_matches_plain_gradients():
    torch.manual_seed(0)
    plain = build_unet("tiny", dropout=0.1)  # dropout: the recompute must replay the same mask
    perturb(plain)
    ckpt = build_unet("tiny", dropout=0.1, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())

    calls = []
    ckpt.middle_block[0].in_layers[2].register_forward_hook(lambda *a: calls.append(1))

    x, t = batch()
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(123)
        model(x, t).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})

    assert len(calls) == 2  # forward + recompute in backward: checkpointing is on
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_attention_matches_explicit_per_head_softmax():
    from blurdiff.unet import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=2)
    perturb(block, scale=0.1)
    x = torch.randn(2, 64, 4, 6)
    b, c, heads, d = 2, 64, 2, 32

    # qkv channels are laid out head by head: [q0, k0, v0, q1, k1, v1], each d wide.
    qkv = block.qkv(block.norm(x.reshape(b, c, -1))).reshape(b, heads, 3, d, -1)
    q, k, v = qkv.unbind(2)  # [B, heads, d, T]
    w = torch.softmax(torch.einsum("bhdt,bhds->bhts", q, k) / d**0.5, dim=-1)
    h = torch.einsum("bhts,bhds->bhdt", w, v).reshape(b, c, -1)
    expected = x + block.proj_out(h).reshape(x.shape)

    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
