"""Fused bias + GELU for the ViT MLP: one autograd.Function with its own backward.

The MLP's first layer is `gelu(x @ W1^T + b1)`. Unfused, the bias add and the GELU each read and
write the (tokens x hidden) activation. Fused, the matmul runs without bias and one kernel adds
the bias and applies GELU; the backward recomputes the GELU derivative from the saved input in
one more kernel. On CUDA both kernels are Triton; elsewhere (and under TRITON_INTERPRET=1, which
runs the same kernels on the CPU for tests) the maths is the same in plain PyTorch.

GELU is the exact (erf) form, as `torch.nn.functional.gelu`'s default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; without it the PyTorch path is used everywhere.
    import triton
    import triton.language as tl
    from triton import knobs

    # Read once, as triton.jit does when it defines the kernels below: interpreted kernels take CPU tensors.
    _INTERPRETED = bool(knobs.runtime.interpret)
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None
    _INTERPRETED = False

BLOCK = 1024

if triton is not None:

    @triton.jit
    def _bias_gelu_forward(x_ptr, bias_ptr, out_ptr, n_elements, n_cols, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
        bias = tl.load(bias_ptr + offsets % n_cols, mask=mask).to(tl.float32)
        pre = x + bias
        out = 0.5 * pre * (1.0 + tl.math.erf(pre * 0.7071067811865476))
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_gelu_backward(grad_ptr, x_ptr, bias_ptr, grad_in_ptr, n_elements, n_cols,  # type: ignore[no-untyped-def]
                            BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n_elements
        grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
        bias = tl.load(bias_ptr + offsets % n_cols, mask=mask).to(tl.float32)
        pre = x + bias
        cdf = 0.5 * (1.0 + tl.math.erf(pre * 0.7071067811865476))
        pdf = tl.exp(-0.5 * pre * pre) * 0.3989422804014327
        tl.store(grad_in_ptr + offsets, (grad * (cdf + pre * pdf)).to(grad_in_ptr.dtype.element_ty), mask=mask)


def triton_usable(tensor: torch.Tensor) -> bool:
    """Triton runs CUDA tensors, and CPU tensors in its interpreter (TRITON_INTERPRET=1)."""
    if triton is None or tensor.dtype == torch.float64:
        return False
    return tensor.is_cuda or _INTERPRETED


def _launch(kernel: Any, *tensors: torch.Tensor, n_cols: int) -> None:
    n_elements = tensors[0].numel()
    kernel[(triton.cdiv(n_elements, BLOCK),)](*tensors, n_elements, n_cols, BLOCK=BLOCK)


def _gelu_grad(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """d gelu(pre) / d pre * grad: PyTorch's own fused kernel (exact erf form), any dtype."""
    return torch.ops.aten.gelu_backward(grad, pre)


class BiasGelu(torch.autograd.Function):
    """gelu(x + bias) with bias broadcast over the last dimension."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        bias_cast = bias.to(x.dtype)  # under autocast x is half precision, the parameter float32
        x = x.contiguous()
        ctx.save_for_backward(x, bias_cast)
        ctx.bias_dtype = bias.dtype
        if triton_usable(x):
            out = torch.empty_like(x)
            _launch(_bias_gelu_forward, x, bias_cast, out, n_cols=x.shape[-1])
            return out
        return F.gelu(x + bias_cast)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, bias = ctx.saved_tensors
        grad = grads[0].contiguous()
        if triton_usable(x):
            grad_in = torch.empty_like(x)
            _launch(_bias_gelu_backward, grad, x, bias, grad_in, n_cols=x.shape[-1])
        else:
            grad_in = _gelu_grad(grad, x + bias)
        accumulate = torch.float64 if grad_in.dtype == torch.float64 else torch.float32
        grad_bias = grad_in.reshape(-1, grad_in.shape[-1]).sum(0, dtype=accumulate).to(ctx.bias_dtype)
        return grad_in, grad_bias


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return BiasGelu.apply(x, bias)  # type: ignore[no-any-return]


def reference_bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias)
