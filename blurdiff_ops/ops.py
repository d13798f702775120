"""Typed wrappers over ``torch.ops.blurdiff_ops``, each with its fake and autograd registrations.

Each public function checks its arguments first (``_checks``, the very checks of the reference,
so both backends accept and reject the same inputs with the same messages), then calls the
compiled op, or ``blurdiff_ops.reference`` when no kernels are loaded for the data's device
(warning once why).

Beside each wrapper, at module level, its op's registrations (they need the compiled ops, so
they run when the extension loaded):

- a fake (meta) kernel for torch.compile and meta tensors, which checks the ranks, shapes and
  dtypes of its arguments with ``torch._check`` (so tracing a wrong call fails with a clear
  message rather than deep inside a compiled graph) and returns an empty output;
- an autograd formula. Every op here is linear in its differentiable inputs, and the adjoint of
  each is again one of them, so backward is a compiled op too: ``to_spectral`` and
  ``from_spectral`` are each other's adjoint; the gradient of ``spectral_lincomb`` with respect
  to ``inputs[k]`` is ``from_spectral(coefs[k, t] ⊙ to_spectral(grad))``: one transform of
  ``grad`` feeds all K, which is the op ``spectral_lincomb_backward``; its own gradient is a
  ``spectral_lincomb``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blurdiff_ops import _checks, _loader, reference

__all__ = ["to_spectral", "from_spectral", "spectral_lincomb", "kernels_available"]

kernels_available = _loader.kernels_available

# The ops exist under torch.ops.blurdiff_ops (and take registrations) once the extension loaded.
_REGISTER = _loader._C is not None


def _use_kernels(x: torch.Tensor) -> bool:
    device_type = x.device.type
    if device_type == "meta" or _loader.kernels_available(device_type):
        return _loader._C is not None
    _loader.warn_fallback(device_type)
    return False


def _check_t_range_here(t) -> bool:
    # A range check reads t back; on CUDA the kernel asserts instead of synchronising, and
    # under torch.compile t has no values to read. (A t that is no tensor fails the checks.)
    return isinstance(t, torch.Tensor) and t.device.type == "cpu" and not torch.compiler.is_compiling()


def _with_defaults(inputs, arity):
    # Trailing arguments left at their schema defaults may be absent.
    return tuple(inputs) + (None,) * (arity - len(inputs))


# ---------------------------------------------------------------------------------------------
# Cheap checks of the fake kernels: ranks, shapes (symbolic ones too: each comparison is its own
# torch._check, so an unknown size becomes a runtime assertion instead of a guess) and dtypes.


def _fake_check(op: str, cond, msg: str) -> None:
    torch._check(cond, lambda: f"blurdiff_ops.{op}: {msg}")


def _fake_check_basis(op: str, U_h, U_w, H, W, table_dtype: torch.dtype) -> None:
    for name, U, n in (("U_h", U_h, H), ("U_w", U_w, W)):
        _fake_check(op, U.dim() == 2, f"{name} must have 2 dimensions, got shape {tuple(U.shape)}")
        _fake_check(op, U.shape[0] == n, f"{name} must have shape ({n}, {n}), got {tuple(U.shape)}")
        _fake_check(op, U.shape[1] == n, f"{name} must have shape ({n}, {n}), got {tuple(U.shape)}")
        _fake_check(op, U.dtype == table_dtype, f"{name} must have dtype {table_dtype}, got {U.dtype}")


def _fake_check_data(op: str, name: str, x) -> None:
    _fake_check(op, x.dim() == 4, f"{name} must be [B, C, H, W], got shape {tuple(x.shape)}")
    _fake_check(
        op, x.dtype in _checks._DATA_DTYPES, f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}"
    )


def _fake_check_same_shape(op: str, name: str, x, like, like_name: str) -> None:
    for d in range(like.dim()):
        _fake_check(
            op,
            x.shape[d] == like.shape[d],
            f"{name} has shape {tuple(x.shape)} but {like_name} has {tuple(like.shape)}",
        )


def _fake_check_samples(op: str, x, coefs, t, U_h, U_w, noise_coef) -> None:
    """The arguments of spectral_lincomb(_backward) beside its data x ``[B, C, H, W]``."""
    B, _, H, W = x.shape
    table_dtype = _checks.table_dtype_for(x.dtype)
    _fake_check(op, coefs.dim() == 4, f"coefs must be [K, T, H, W], got shape {tuple(coefs.shape)}")
    _fake_check(op, coefs.shape[2] == H, f"coefs must have shape [K, T, {H}, {W}], got {tuple(coefs.shape)}")
    _fake_check(op, coefs.shape[3] == W, f"coefs must have shape [K, T, {H}, {W}], got {tuple(coefs.shape)}")
    _fake_check(op, coefs.dtype == table_dtype, f"coefs must have dtype {table_dtype}, got {coefs.dtype}")
    _fake_check(op, t.dim() == 1, f"t must have shape [B={B}], got {tuple(t.shape)}")
    _fake_check(op, t.shape[0] == B, f"t must have shape [B={B}], got {tuple(t.shape)}")
    _fake_check(op, t.dtype == torch.int64, f"t must be int64, got {t.dtype}")
    _fake_check_basis(op, U_h, U_w, H, W, table_dtype)
    if noise_coef is not None:
        T = coefs.shape[1]
        _fake_check(op, noise_coef.dim() == 3, f"noise_coef must be [T, H, W], got shape {tuple(noise_coef.shape)}")
        for d, n in enumerate((T, H, W)):
            _fake_check(
                op,
                noise_coef.shape[d] == n,
                f"noise_coef must have shape [T={T}, {H}, {W}], got {tuple(noise_coef.shape)}",
            )
        _fake_check(
            op, noise_coef.dtype == table_dtype, f"noise_coef must have dtype {table_dtype}, got {noise_coef.dtype}"
        )


# ---------------------------------------------------------------------------------------------
# to_spectral and from_spectral


def to_spectral(x: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h^T · x · U_w`` over the last two dims of ``x`` (any leading dims).

    Differentiable with respect to ``x``; ``U_h`` and ``U_w`` are constants: a ValueError while
    grad mode is on if they require grad (detach them).
    """
    _checks.check_transform("to_spectral", x, U_h, U_w)
    if not _use_kernels(x):
        return reference.to_spectral(x, U_h, U_w)
    return torch.ops.blurdiff_ops.to_spectral.default(x, U_h, U_w)


def from_spectral(x_bar: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h · x̄ · U_w^T`` over the last two dims of ``x_bar`` (any leading dims).

    Differentiable with respect to ``x_bar``; ``U_h`` and ``U_w`` are constants, as in
    ``to_spectral``.
    """
    _checks.check_transform("from_spectral", x_bar, U_h, U_w)
    if not _use_kernels(x_bar):
        return reference.from_spectral(x_bar, U_h, U_w)
    return torch.ops.blurdiff_ops.from_spectral.default(x_bar, U_h, U_w)


def _transform_fake(op: str):
    def fake(x, U_h, U_w):
        _fake_check(op, x.dim() >= 2, f"x must have at least 2 dimensions [..., H, W], got shape {tuple(x.shape)}")
        _fake_check(
            op, x.dtype in _checks._DATA_DTYPES, f"x must be float32, float64, float16 or bfloat16, got {x.dtype}"
        )
        _fake_check_basis(op, U_h, U_w, x.shape[-2], x.shape[-1], _checks.table_dtype_for(x.dtype))
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    return fake


# Reached only with grad mode on and some argument requiring grad; the public wrappers have
# checked already, this catches direct torch.ops calls.
def _transform_setup(op: str):
    def setup(ctx, inputs, output):
        _, U_h, U_w = inputs
        _checks.check_constant_tables(op, U_h=U_h, U_w=U_w)
        ctx.save_for_backward(U_h, U_w)

    return setup


def _to_spectral_backward(ctx, grad):
    U_h, U_w = ctx.saved_tensors
    return torch.ops.blurdiff_ops.from_spectral.default(grad, U_h, U_w), None, None


def _from_spectral_backward(ctx, grad):
    U_h, U_w = ctx.saved_tensors
    return torch.ops.blurdiff_ops.to_spectral.default(grad, U_h, U_w), None, None


if _REGISTER:
    torch.library.register_fake("blurdiff_ops::to_spectral", _transform_fake("to_spectral"))
    torch.library.register_autograd(
        "blurdiff_ops::to_spectral", _to_spectral_backward, setup_context=_transform_setup("to_spectral")
    )
    torch.library.register_fake("blurdiff_ops::from_spectral", _transform_fake("from_spectral"))
    torch.library.register_autograd(
        "blurdiff_ops::from_spectral", _from_spectral_backward, setup_context=_transform_setup("from_spectral")
    )


# ---------------------------------------------------------------------------------------------
# spectral_lincomb


def spectral_lincomb(
    inputs: Sequence[torch.Tensor],
    coefs: torch.Tensor,
    t: torch.Tensor,
    U_h: torch.Tensor,
    U_w: torch.Tensor,
    noise_coef: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``from_spectral(Σ_k coefs[k, t[b]] ⊙ to_spectral(inputs[k][b]) + noise_coef[t[b]] ⊙ z̄[b])``.

    ``inputs``: K tensors ``[B, C, H, W]``; ``coefs``: ``[K, T, H, W]``; ``t``: int64 ``[B]``;
    ``noise_coef``: ``[T, H, W]`` or None. ``z̄`` is ``to_spectral(noise)`` when ``noise`` is
    given, else standard normals drawn in the spectral domain from ``generator`` (the kernels
    use Philox keyed by the generator's seed and offset, so a seeded generator reproduces).
    Differentiable with respect to ``inputs`` and ``noise``; ``coefs``, ``U_h``, ``U_w`` and
    ``noise_coef`` are constants: a ValueError while grad mode is on if one requires grad
    (detach it). Any strides are accepted (views, expanded or offset tensors).
    """
    _checks.check_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise, _check_t_range_here(t))
    _checks.check_generator(generator, inputs[0].device)
    if not _use_kernels(inputs[0]):
        return reference.spectral_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise, generator)
    return torch.ops.blurdiff_ops.spectral_lincomb.default(
        list(inputs), coefs, t, U_h, U_w, noise_coef, noise, generator
    )


def _lincomb_fake(inputs, coefs, t, U_h, U_w, noise_coef=None, noise=None, generator=None):
    op = "spectral_lincomb"
    _fake_check(op, len(inputs) > 0, "inputs must hold at least one tensor")
    x0 = inputs[0]
    for k, x in enumerate(inputs):
        _fake_check_data(op, f"inputs[{k}]", x)
        _fake_check_same_shape(op, f"inputs[{k}]", x, x0, "inputs[0]")
        _fake_check(op, x.dtype == x0.dtype, f"inputs[{k}] has dtype {x.dtype} but inputs[0] has {x0.dtype}")
    _fake_check_samples(op, x0, coefs, t, U_h, U_w, noise_coef)
    _fake_check(
        op, coefs.shape[0] == len(inputs), f"coefs must have shape [K={len(inputs)}, T, H, W], got {tuple(coefs.shape)}"
    )
    if noise is not None:
        _fake_check(op, noise_coef is not None, "noise was given but noise_coef is None")
        _fake_check_data(op, "noise", noise)
        _fake_check_same_shape(op, "noise", noise, x0, "inputs[0]")
        _fake_check(op, noise.dtype == x0.dtype, f"noise has dtype {noise.dtype} but the inputs have {x0.dtype}")
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


def _lincomb_setup(ctx, inputs, output):
    xs, coefs, t, U_h, U_w, noise_coef, noise, _ = _with_defaults(inputs, 8)
    _checks.check_constant_tables("spectral_lincomb", coefs=coefs, U_h=U_h, U_w=U_w, noise_coef=noise_coef)
    ctx.num_inputs = len(xs)
    ctx.noise_given = noise is not None
    ctx.save_for_backward(coefs, t, U_h, U_w, noise_coef)


def _lincomb_backward(ctx, grad):
    coefs, t, U_h, U_w, noise_coef = ctx.saved_tensors
    # The noise term only has a gradient when the noise was an input.
    grads = torch.ops.blurdiff_ops.spectral_lincomb_backward.default(
        grad, coefs, t, U_h, U_w, noise_coef if ctx.noise_given else None
    )
    grad_noise = grads[ctx.num_inputs] if ctx.noise_given else None
    return list(grads[: ctx.num_inputs]), None, None, None, None, None, grad_noise, None


if _REGISTER:
    torch.library.register_fake("blurdiff_ops::spectral_lincomb", _lincomb_fake)
    torch.library.register_autograd("blurdiff_ops::spectral_lincomb", _lincomb_backward, setup_context=_lincomb_setup)


# ---------------------------------------------------------------------------------------------
# spectral_lincomb_backward (no public wrapper: the autograd formula above calls it)


def _lincomb_backward_fake(grad, coefs, t, U_h, U_w, noise_coef=None):
    op = "spectral_lincomb_backward"
    _fake_check_data(op, "grad", grad)
    _fake_check_samples(op, grad, coefs, t, U_h, U_w, noise_coef)
    n = coefs.shape[0] + (noise_coef is not None)
    return [torch.empty_like(grad, memory_format=torch.contiguous_format) for _ in range(n)]


def _lincomb_backward_setup(ctx, inputs, output):
    _, coefs, t, U_h, U_w, noise_coef = _with_defaults(inputs, 6)
    ctx.save_for_backward(coefs, t, U_h, U_w, noise_coef)


def _lincomb_backward_backward(ctx, grads: list[torch.Tensor]):
    coefs, t, U_h, U_w, noise_coef = ctx.saved_tensors
    K = coefs.shape[0]
    # Outputs that did not reach the loss come back as None: they contribute nothing.
    like = next(g for g in grads if g is not None)
    grads = [torch.zeros_like(like) if g is None else g for g in grads]
    noise = grads[K] if noise_coef is not None else None
    grad_grad = torch.ops.blurdiff_ops.spectral_lincomb.default(grads[:K], coefs, t, U_h, U_w, noise_coef, noise, None)
    return grad_grad, None, None, None, None, None


if _REGISTER:
    torch.library.register_fake("blurdiff_ops::spectral_lincomb_backward", _lincomb_backward_fake)
    torch.library.register_autograd(
        "blurdiff_ops::spectral_lincomb_backward", _lincomb_backward_backward, setup_context=_lincomb_backward_setup
    )
