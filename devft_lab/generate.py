"""Greedy chat answers, for sanity checks and notebooks."""
from __future__ import annotations

import torch


@torch.no_grad()
def answer(model, tokenizer, question: str, max_new_tokens: int = 48) -> str:
    """Greedy answer of a chat model to one user message (uses the tokenizer's chat template)."""
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    ).to(next(model.parameters()).device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
