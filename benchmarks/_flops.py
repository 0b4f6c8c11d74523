"""Multiply-accumulate counting of the model's phases on the meta device (no compute, no memory).

A dispatch mode adds up ``torch.utils.flop_counter``'s formulas (matmul, bmm, conv and their backward, attention
decomposed to bmm on the meta device); unlike ``FlopCounterMode`` it tracks no modules, so it works inside
``autograd.grad(is_grads_batched=True)``. MAC = FLOP / 2.
"""
from __future__ import annotations

from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class MacCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fn = flop_registry.get(func._overloadpacket)
        if fn is not None:
            self.flops += int(fn(*args, **kwargs, out_val=out))
        return out

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_macs(fn: Callable[[], object]) -> int:
    """MACs of everything ``fn`` dispatches."""
    with MacCounter() as mc:
        fn()
    return mc.macs
