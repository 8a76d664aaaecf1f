"""LoRA dropout whose random masks cost a fraction of PyTorch's on most CPUs.

PEFT applies dropout to the input of every LoRA ``A`` (with LoRA on q and v: two masks the
size of the hidden states, per layer and micro-batch). On the CPU, PyTorch draws a Bernoulli
mask one element at a time from its Mersenne Twister (its vectorised MKL path serves Intel
CPUs only), a visible share of a compiled LoRA step (``python -m devft_lab.bench``,
``step_breakdown``; measurements in ``docs/performance.md#measurements-behind-the-code``).

:class:`BitsDropout` draws int64 random words instead (63 random bits each), four mask elements per word, and
drops an element when its 15 random bits fall below ``round(p * 2**15)``: ``p`` is met to within
2^-16, and the kept elements are scaled by ``1 / (1 - p_effective)``, so the expectation is
exact, as in ``nn.Dropout``. The words come from ``torch.randint`` and PyTorch's global
generator, so a seed gives the same masks, eager and under ``torch.compile`` alike (with
inductor's ``fallback_random``, :mod:`devft_lab.core.compiled`). PyTorch's CPU generator costs about
the same per word, 32 bits or 64, so 64-bit words halve the cost of 32-bit words with two elements each.

    with bits_dropout(model, enabled=mask_sampler(device) == SAMPLER):
        ...  # training: every PEFT LoRA dropout draws its masks this way; nn.Dropout again afterwards
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

BITS = 15  # random bits per mask element
SAMPLER = "bits15x4"  # the name meta.json gives BitsDropout's masks (15 bits, four elements a 64-bit word)


def drop_threshold(p: float) -> int:
    """Elements whose 15 random bits are below this are dropped: ``round(p * 2**15)``."""
    return round(p * 2 ** BITS)


class BitsDropout(torch.nn.Module):
    """``nn.Dropout(p)`` with masks from 15 random bits per element (see the module doc)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p}: give a probability in [0, 1).")
        self.p = p
        self.threshold = drop_threshold(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        # 63 random bits a word (values in [0, 2^63 - 1)): four 16-bit lanes, 15 random bits kept of each
        words = torch.randint(0, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        bits = words.view(torch.int16)[:n].view(x.shape) & (2 ** BITS - 1)
        keep = 1.0 - self.threshold / 2 ** BITS
        return x * (bits >= self.threshold).to(x.dtype) * (1.0 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mask_sampler(device: str | torch.device) -> str:
    """How training on ``device`` draws LoRA dropout masks: :data:`SAMPLER` (:class:`BitsDropout`)
    on the CPU, ``torch`` (PyTorch's own dropout) elsewhere. Recorded in a run's meta.json."""
    return SAMPLER if torch.device(device).type == "cpu" else "torch"


@contextlib.contextmanager
def bits_dropout(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Run the body with every PEFT LoRA dropout of ``model`` a :class:`BitsDropout` of the same
    ``p``; the original modules again afterwards. Yields how many were swapped."""
    swapped: list[tuple[torch.nn.ModuleDict, str, torch.nn.Module]] = []
    if enabled:
        for module in model.modules():
            dicts = getattr(module, "lora_dropout", None)
            if not isinstance(dicts, torch.nn.ModuleDict):
                continue
            for name, drop in dicts.items():
                if type(drop) is torch.nn.Dropout and drop.p > 0:
                    swapped.append((dicts, name, drop))
        for dicts, name, drop in swapped:
            dicts[name] = BitsDropout(drop.p)
    try:
        yield len(swapped)
    finally:
        for dicts, name, drop in swapped:
            dicts[name] = drop
