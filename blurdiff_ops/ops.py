"""Typed wrappers over ``torch.ops.blurdiff_ops``, each with its fake and autograd registrations.

A wrapper checks its arguments (``_checks``: the reference's own checks, so both backends accept
and reject the same inputs with the same messages) and calls the compiled op, or
``blurdiff_ops.reference`` (warning once why) when no kernels are loaded for the data's device.

The registrations, made when the extension loaded: a fake kernel for torch.compile and meta
tensors, which runs the same checks (a wrong call fails with the eager message, not deep inside a
compiled graph); and an autograd formula. Every op is linear in its differentiable inputs and its
adjoint is again one of them: ``to_spectral`` and ``from_spectral`` are each other's; the gradient
of ``spectral_lincomb`` with respect to every ``inputs[k]``, ``from_spectral(coefs[k, t] ⊙
to_spectral(grad))``, is the op ``spectral_lincomb_backward``, whose gradient is a ``spectral_lincomb``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blurdiff_ops import _checks, _loader, reference

__all__ = ["to_spectral", "from_spectral", "spectral_lincomb", "kernels_available"]

kernels_available = _loader.kernels_available

# The ops exist under torch.ops.blurdiff_ops (and take registrations) once the extension loaded.
_REGISTER = _loader._C is not None


def _use_kernels(x) -> bool:
    if not isinstance(x, torch.Tensor):  # the reference's checks say what is wrong
        return False
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
# to_spectral and from_spectral


def to_spectral(x: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h^T · x · U_w`` over the last two dims of ``x`` (any leading dims).

    Differentiable with respect to ``x``; ``U_h`` and ``U_w`` are constants: a ValueError while
    grad mode is on if they require grad (detach them).
    """
    if not _use_kernels(x):
        return reference.to_spectral(x, U_h, U_w)
    _checks.check_transform("to_spectral", x, U_h, U_w)
    return torch.ops.blurdiff_ops.to_spectral.default(x, U_h, U_w)


def from_spectral(x_bar: torch.Tensor, U_h: torch.Tensor, U_w: torch.Tensor) -> torch.Tensor:
    """``U_h · x̄ · U_w^T`` over the last two dims of ``x_bar`` (any leading dims).

    Differentiable with respect to ``x_bar``; ``U_h`` and ``U_w`` are constants, as in
    ``to_spectral``.
    """
    if not _use_kernels(x_bar):
        return reference.from_spectral(x_bar, U_h, U_w)
    _checks.check_transform("from_spectral", x_bar, U_h, U_w)
    return torch.ops.blurdiff_ops.from_spectral.default(x_bar, U_h, U_w)


def _transform_fake(op: str):
    def fake(x, U_h, U_w):
        _checks.check_transform(op, x, U_h, U_w, traced=True)
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


def _transform_backward(adjoint: str):
    def backward(ctx, grad):
        U_h, U_w = ctx.saved_tensors
        return getattr(torch.ops.blurdiff_ops, adjoint).default(grad, U_h, U_w), None, None

    return backward


if _REGISTER:
    for _op, _adjoint in (("to_spectral", "from_spectral"), ("from_spectral", "to_spectral")):
        torch.library.register_fake(f"blurdiff_ops::{_op}", _transform_fake(_op))
        torch.library.register_autograd(
            f"blurdiff_ops::{_op}", _transform_backward(_adjoint), setup_context=_transform_setup(_op)
        )
    del _op, _adjoint


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
    if not _use_kernels(inputs[0] if isinstance(inputs, (list, tuple)) and inputs else None):
        return reference.spectral_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise, generator)
    _checks.check_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise, _check_t_range_here(t))
    _checks.check_generator(generator, inputs[0].device)
    return torch.ops.blurdiff_ops.spectral_lincomb.default(
        list(inputs), coefs, t, U_h, U_w, noise_coef, noise, generator
    )


def _lincomb_fake(inputs, coefs, t, U_h, U_w, noise_coef=None, noise=None, generator=None):
    _checks.check_lincomb(inputs, coefs, t, U_h, U_w, noise_coef, noise, check_t_range=False, traced=True)
    return torch.empty_like(inputs[0], memory_format=torch.contiguous_format)


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
    _checks.check_data(op, "grad", grad)
    _checks.check_tables(op, grad, None, coefs, t, U_h, U_w, noise_coef, check_t_range=False)
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
