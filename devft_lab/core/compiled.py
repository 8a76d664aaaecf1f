"""Regional compilation: ``torch.compile`` each decoder layer, not the whole model.

At hidden size 576 (SmolLM2-135M) a LoRA step spends most of its time *between* the GEMMs:
RMSNorm, rotary embeddings, SiLU x gate, LoRA dropout and scaling, and the casts autocast
inserts. Inductor fuses those into a few loops per layer. The decoder layers of a model run
the same code, so dynamo traces one graph and every layer reuses it, and so does every stage's
fused submodel (same layer class, other tensors): the compile cost is paid once per process,
not per layer or per stage (PyTorch's "regional compilation" recipe).

    with compiled_layers(model, enabled=True):
        ...  # forward and backward through compiled layers
    # eager again: evaluation and the method's maths never see compiled modules

Shapes are compiled dynamic (``dynamic=True``), so packed batches of any length reuse the graph.
Random numbers (the LoRA dropout masks) come from PyTorch's own generator, as in eager mode
(inductor's ``fallback_random``): inductor's own generator draws them element by element inside
the fused RMSNorm + dropout loop, which is slower (``python -m devft_lab.bench``: ``local_step``,
``step_breakdown``; ``docs/performance.md#measurements-behind-the-code``), and with the fallback
compiled training draws eager's masks.
Numerics: the same maths in another order, so not bit for bit: in fp32 the losses and trained
LoRA agree with eager within 1e-4, LoRA dropout included (``tests/test_compiled.py``). A resumed run reads the setting
it started with from its config.yaml.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import warnings
from typing import Iterator

import torch

from devft_lab.core.layers import decoder_layers, unwrap


OPTIONS = {"fallback_random": True}  # inductor options of every compiled layer (see the module doc)


@functools.lru_cache(maxsize=1)
def compile_available() -> tuple[bool, str]:
    """(whether inductor can compile on this machine, why not). CPU code needs a C++ compiler."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return False, "no C++ compiler on PATH (inductor's CPU backend needs one: apt-get install g++)"
    return True, ""


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Run the body with every decoder layer of ``model`` compiled; eager again afterwards.

    Yields whether compilation is on (``False`` when ``enabled`` is false or the machine cannot
    compile: a warning says why and the body runs eager).
    """
    if not enabled:
        yield False
        return
    ok, why = compile_available()
    if not ok:
        warnings.warn(f"train.compile: running eager, {why}.", stacklevel=3)
        yield False
        return
    layers = list(decoder_layers(unwrap(model)))
    for layer in layers:
        layer.compile(dynamic=True, options=OPTIONS)
    try:
        yield True
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # nn.Module.compile's hook: None means eager
