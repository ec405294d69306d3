"""The fused bias + GELU: its own backward against autograd's, the Triton kernels against PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from raylight_trainer.model import VisionTransformer, ViTConfig
from raylight_trainer.model.fused import BiasGelu, bias_gelu, reference_bias_gelu


def test_gradcheck_in_float64() -> None:
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BiasGelu.apply, (x, bias), eps=1e-6, atol=1e-5)


def test_forward_and_backward_agree_with_the_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 17, 96, requires_grad=True)
    bias = torch.randn(96, requires_grad=True)
    grad = torch.randn(4, 17, 96)
    out = bias_gelu(x, bias)
    out.backward(grad)
    fused_grads = (x.grad.clone(), bias.grad.clone())  # type: ignore[union-attr]
    x.grad, bias.grad = None, None
    expected = reference_bias_gelu(x, bias)
    expected.backward(grad)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(fused_grads[0], x.grad)
    torch.testing.assert_close(fused_grads[1], bias.grad, rtol=1e-5, atol=1e-4)


def test_bfloat16_input_keeps_a_float32_bias_gradient() -> None:
    x = torch.randn(8, 32, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(32, requires_grad=True)
    out = bias_gelu(x, bias)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert bias.grad is not None and bias.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), reference_bias_gelu(x.float(), bias).detach(), rtol=2e-2, atol=2e-2)


def test_fused_mlp_vit_matches_the_unfused_one() -> None:
    cfg = ViTConfig(depth=2, num_classes=5)
    torch.manual_seed(0)
    plain = VisionTransformer(cfg)
    fused = VisionTransformer(ViTConfig(depth=2, num_classes=5, fused_mlp=True))
    fused.load_state_dict(plain.state_dict())  # the same parameters
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(fused(images), plain(images))
    fused(images).square().sum().backward()
    plain(images).square().sum().backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


TRITON_CHECK = textwrap.dedent("""
    import torch
    from raylight_trainer.model import fused
    torch.manual_seed(0)
    x = torch.randn(3, 50, 72, requires_grad=True)   # 10800 elements: several blocks and a ragged tail
    bias = torch.randn(72, requires_grad=True)
    assert fused.triton_usable(x)
    grad = torch.randn_like(x)
    out = fused.bias_gelu(x, bias)
    out.backward(grad)
    got = (out.detach(), x.grad.clone(), bias.grad.clone())
    x.grad = bias.grad = None
    ref = fused.reference_bias_gelu(x, bias)
    ref.backward(grad)
    torch.testing.assert_close(got[0], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], bias.grad, rtol=1e-5, atol=1e-4)
    print("triton kernels agree")
""")


def test_triton_kernels_agree_with_pytorch_in_the_interpreter() -> None:
    """The CUDA kernels' code, run by Triton's interpreter on the CPU (no GPU here)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triton kernels agree" in done.stdout


def test_without_the_interpreter_cpu_tensors_take_the_pytorch_path() -> None:
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("interpreter on in this process")
    from raylight_trainer.model import fused

    assert not fused.triton_usable(torch.randn(4))
