"""Argument checks of the ops, written once: the reference ops, the compiled-op wrappers and the
compiled ops' fake kernels (``traced``: under torch.compile, on fake tensors) all run these.

Both backends reject the same inputs with the same messages, and a public call is checked once
(by the wrapper before the compiled op, by the reference on the fallback path). The C++ ops repeat
the cheap structural checks for direct ``torch.ops`` calls; the messages users see are these.

Tables (``coefs``, ``U_h``, ``U_w``, ``noise_coef``) must not require grad while grad mode is
on: the ops are not differentiable with respect to them, and a gradient that silently stops
at a table is worse than an error. Under ``torch.no_grad()`` they may (nothing is recorded).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_DATA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def table_dtype_for(data_dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``U_h``, ``U_w``, ``coefs`` and ``noise_coef`` for data of ``data_dtype``, which
    the ops compute in: float32, or float64 for float64 data (half precision eigenvectors would
    cost more accuracy than the half precision data itself)."""
    return torch.float64 if data_dtype == torch.float64 else torch.float32


def _capturing(t: torch.Tensor) -> bool:
    # Reading t back would end a CUDA graph's capture with an error; the captured indexing by t
    # asserts on the device instead (as the CUDA kernels always do), and a capture comes after
    # eager warm-up runs, which check.
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"blurdiff_ops.{op}: {msg}")


def _check_is_tensor(op: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        _fail(op, f"{name} must be a dense (strided) tensor, got layout {x.layout}")


def _check_tensor(op: str, name: str, x, ndim: int) -> None:
    _check_is_tensor(op, name, x)
    if x.dim() != ndim:
        _fail(op, f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def _check_basis(op: str, U_h, U_w, H: int, W: int, dtype: torch.dtype, device) -> None:
    for name, U, n in (("U_h", U_h, H), ("U_w", U_w, W)):
        _check_tensor(op, name, U, 2)
        if tuple(U.shape) != (n, n):
            _fail(op, f"{name} must have shape ({n}, {n}) to match the image, got {tuple(U.shape)}")
        if U.dtype != dtype:
            _fail(op, f"{name} must have dtype {dtype} for this data, got {U.dtype}")
        if U.device != device:
            _fail(op, f"{name} is on {U.device} but the data is on {device}")


def check_data(op: str, name: str, x) -> None:
    _check_tensor(op, name, x, 4)
    if x.dtype not in _DATA_DTYPES:
        _fail(op, f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def check_constant_tables(op: str, **tables: torch.Tensor | None) -> None:
    """Reject tables that require grad (see the module docstring); call where grad mode is on."""
    for name, value in tables.items():
        if value is not None and value.requires_grad:
            _fail(
                op,
                f"{name} requires grad, but the op is not differentiable with respect to {name} "
                f"(bases and coefficient tables are constants): pass {name}.detach()",
            )


def check_transform(op: str, x, U_h, U_w, traced: bool = False) -> None:
    """Checks for ``to_spectral`` / ``from_spectral``: x is ``[..., H, W]`` (at least 2-D).
    ``traced``: a fake kernel's call, where autograd has handled the tables already."""
    _check_is_tensor(op, "x", x)
    if x.dim() < 2:
        _fail(op, f"x must have at least 2 dimensions [..., H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _DATA_DTYPES:
        _fail(op, f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    H, W = x.shape[-2], x.shape[-1]
    _check_basis(op, U_h, U_w, H, W, table_dtype_for(x.dtype), x.device)
    if torch.is_grad_enabled() and not traced:
        check_constant_tables(op, U_h=U_h, U_w=U_w)


def check_lincomb(
    inputs: Sequence[torch.Tensor],
    coefs: torch.Tensor,
    t: torch.Tensor,
    U_h: torch.Tensor,
    U_w: torch.Tensor,
    noise_coef: torch.Tensor | None,
    noise: torch.Tensor | None,
    check_t_range: bool = True,
    traced: bool = False,
) -> None:
    """Checks for ``spectral_lincomb`` (docs/design.md §2). ``check_t_range`` reads ``t`` back to
    the host (never for a ``t`` on the meta device); callers that built ``t`` themselves may skip
    that synchronisation. ``traced``: as in :func:`check_transform`."""
    op = "spectral_lincomb"
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)):
        _fail(op, f"inputs must be a list of [B, C, H, W] tensors, got {type(inputs).__name__}")
    if len(inputs) == 0:
        _fail(op, "inputs must hold at least one tensor")
    for k, x in enumerate(inputs):
        check_data(op, f"inputs[{k}]", x)
    x0 = inputs[0]
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    for k, x in enumerate(inputs[1:], start=1):
        if x.shape != shape:
            _fail(op, f"inputs[{k}] has shape {tuple(x.shape)} but inputs[0] has {tuple(shape)}")
        if x.dtype != dtype:
            _fail(op, f"inputs[{k}] has dtype {x.dtype} but inputs[0] has {dtype}")
        if x.device != device:
            _fail(op, f"inputs[{k}] is on {x.device} but inputs[0] is on {device}")
    check_tables(op, x0, len(inputs), coefs, t, U_h, U_w, noise_coef, check_t_range)
    if noise is not None and noise_coef is None:
        _fail(op, "noise was given but noise_coef is None (the noise term needs its coefficients)")
    if noise is not None:
        check_data(op, "noise", noise)
        if noise.shape != shape:
            _fail(op, f"noise must have the inputs' shape {tuple(shape)}, got {tuple(noise.shape)}")
        if noise.dtype != dtype:
            _fail(op, f"noise has dtype {noise.dtype} but the inputs have {dtype}")
        if noise.device != device:
            _fail(op, f"noise is on {noise.device} but the inputs are on {device}")
    if torch.is_grad_enabled() and not traced:
        check_constant_tables(op, coefs=coefs, U_h=U_h, U_w=U_w, noise_coef=noise_coef)


def check_tables(
    op: str,
    x: torch.Tensor,
    K: int | None,
    coefs: torch.Tensor,
    t: torch.Tensor,
    U_h: torch.Tensor,
    U_w: torch.Tensor,
    noise_coef: torch.Tensor | None,
    check_t_range: bool,
) -> None:
    """The arguments beside the data ``x`` ``[B, C, H, W]`` of ``spectral_lincomb`` (K inputs) and
    of ``spectral_lincomb_backward`` (K None: any number of coefficient planes)."""
    B, _, H, W = x.shape
    dtype, device = x.dtype, x.device
    table_dtype = table_dtype_for(dtype)
    _check_tensor(op, "coefs", coefs, 4)
    if (K is not None and coefs.shape[0] != K) or tuple(coefs.shape[2:]) != (H, W):
        _fail(op, f"coefs must have shape [K={'K' if K is None else K}, T, {H}, {W}], got {tuple(coefs.shape)}")
    if coefs.dtype != table_dtype:
        _fail(op, f"coefs must have dtype {table_dtype} for {dtype} inputs, got {coefs.dtype}")
    if coefs.device != device:
        _fail(op, f"coefs is on {coefs.device} but the inputs are on {device}")
    T = coefs.shape[1]

    _check_tensor(op, "t", t, 1)
    if t.dtype != torch.int64:
        _fail(op, f"t must be int64, got {t.dtype}")
    if t.shape[0] != B:
        _fail(op, f"t must have shape [B={B}], got {tuple(t.shape)}")
    if t.device != device:
        _fail(op, f"t is on {t.device} but the inputs are on {device}")
    if B > 0 and T == 0:
        _fail(op, "coefs has no rows (T = 0), so no t can index it")
    if check_t_range and B > 0 and t.device.type != "meta" and not _capturing(t):
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= T:
            _fail(op, f"t must lie in [0, {T - 1}] (the rows of coefs), got values in [{lo}, {hi}]")

    _check_basis(op, U_h, U_w, H, W, table_dtype, device)

    if noise_coef is not None:
        _check_tensor(op, "noise_coef", noise_coef, 3)
        if tuple(noise_coef.shape) != (T, H, W):
            _fail(op, f"noise_coef must have shape [T={T}, {H}, {W}], got {tuple(noise_coef.shape)}")
        if noise_coef.dtype != table_dtype:
            _fail(op, f"noise_coef must have dtype {table_dtype} for {dtype} inputs, got {noise_coef.dtype}")
        if noise_coef.device != device:
            _fail(op, f"noise_coef is on {noise_coef.device} but the inputs are on {device}")


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        _fail("spectral_lincomb", f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        _fail("spectral_lincomb", f"generator is for {generator.device.type} but the inputs are on {device.type}")
