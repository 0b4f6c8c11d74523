"""The frozen-weight autograd of guidance: same values and input gradients as PyTorch's own modules, fewer bytes
saved for the backward."""
import pytest
import torch

import mf_model.frozen_grad as frozen_grad
from mf_model.config import MotionModuleConfig
from mf_model.layers import GEGLU, InflatedConv3d, ResnetBlock3D
from mf_model.transformer import TemporalTransformerBlock


def _plain(monkeypatch):
    """Route every layer to PyTorch's own autograd (the reference)."""
    monkeypatch.setattr(frozen_grad, "input_grad_only", lambda *a: False)
    import mf_model.layers as layers
    monkeypatch.setattr(layers, "input_grad_only", lambda *a: False)
    import mf_model.transformer as transformer
    monkeypatch.setattr(transformer, "input_grad_only", lambda *a: False)


def _run(module, x, *args):
    """Output, the batched input gradient of two energies, and the bytes saved for the backward."""
    saved = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    xg = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xg, *args)
    energies = torch.stack([(y * y).sum(), y.sin().sum()])
    g = torch.autograd.grad(energies, xg, torch.eye(2), is_grads_batched=True)[0]
    return y.detach(), g, sum(n for p, n in saved.items() if p not in params)


@pytest.mark.parametrize("case", ["geglu", "conv", "resnet", "temporal"])
def test_values_and_input_gradients_equal_plain_autograd_with_fewer_saved_bytes(case, monkeypatch):
    torch.manual_seed(0)
    module, x, args = {
        "geglu": lambda: (GEGLU(32, 64), torch.randn(3, 7, 32), ()),
        "conv": lambda: (InflatedConv3d(16, 8, 3, stride=2, padding=1), torch.randn(4, 16, 9, 7), ()),
        "resnet": lambda: (ResnetBlock3D(64, 32, 16, 8, 1e-6), torch.randn(4, 64, 6, 5), (torch.randn(2, 16), 2)),
        # (B*F, tokens, C) with F = 3 frames; the temporal attention is recomputed in the backward
        "temporal": lambda: (TemporalTransformerBlock(32, MotionModuleConfig(num_attention_heads=4)),
                             torch.randn(6, 10, 32), (3,)),
    }[case]()
    module.requires_grad_(False)
    y, g, saved = _run(module, x, *args)
    _plain(monkeypatch)
    y_ref, g_ref, saved_ref = _run(module, x, *args)
    assert torch.equal(y, y_ref)
    assert (g - g_ref).abs().max().item() <= 1e-5 * g_ref.abs().max().item()
    assert saved < saved_ref


def test_trainable_weights_keep_pytorchs_autograd():
    torch.manual_seed(0)
    m = GEGLU(8, 16)  # weights require grad: their gradient must still come out
    m(torch.randn(2, 8, requires_grad=True)).sum().backward()
    assert m.proj.weight.grad is not None and m.proj.weight.grad.abs().sum() > 0
