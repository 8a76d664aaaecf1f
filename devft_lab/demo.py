"""The main job behind ``make demo``: DevFT on the embedded default model.

This version checks the foundation end to end: load the embedded model, answer a
sanity question, and show the decoder stack DevFT will grow through. The federated
stage schedule joins here when the runtime lands.
"""
from __future__ import annotations

import time


def main(model_name: str = "smollm2-135m", quiet: bool = False) -> int:
    from devft_lab import layers
    from devft_lab.generate import answer
    from devft_lab.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model(model_name)
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    L = layers.num_layers(model)
    print(f"model      {model_name}: {type(model).__name__}, {L} decoder layers, "
          f"{n_params / 1e6:.1f} M parameters, loaded in {load_s:.1f} s")
    q = "What is the capital of France?"
    t1 = time.perf_counter()
    print(f"question   {q}\nanswer     {answer(model, tok, q, max_new_tokens=16)}  "
          f"({time.perf_counter() - t1:.1f} s)")
    print(f"summary    foundation OK in {time.perf_counter() - t0:.1f} s")
    return 0
