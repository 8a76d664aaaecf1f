"""Greedy answers, for sanity checks and notebooks."""
from __future__ import annotations

import torch


@torch.no_grad()
def answer(model, tokenizer, question: str, max_new_tokens: int = 48) -> str:
    """Greedy answer to one question: through the chat template when the tokenizer has
    one (instruct models), else as a plain ``Question: … Answer:`` prompt (base models)."""
    device = next(model.parameters()).device
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True,
        )
    else:
        enc = tokenizer(f"Question: {question}\nAnswer:", return_tensors="pt")
    enc = enc.to(device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
