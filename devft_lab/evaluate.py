"""Evaluation: perplexity (more scorers join here: multiple choice, exact match)."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 8) -> float:
    """Token-level perplexity exp(mean NLL) of ``model`` on ``texts`` (each truncated to ``max_length``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length).to(device)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        logits = model(**enc).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((target != -100).sum())
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one text with two or more tokens.")
    return math.exp(total_nll / total_tokens)
