"""Scoring: known answers on hand-built toy models (the scorer against the plain reference:
tests/test_evaluate_reference.py)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from devft_lab.core.evaluate import (answer_matches, choice_loglikelihoods, evaluate_suites, exact_match, perplexity,
                                    score_multiple_choice)
from devft_lab.core.models import byte_tokenizer, load_model


class Favour(nn.Module):
    """Logits that ignore the input: a fixed vector (so every log-likelihood is known)."""

    def __init__(self, vocab: int, favoured: dict[int, float]):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(vocab), requires_grad=False)
        for tok, value in favoured.items():
            self.logits.data[tok] = value

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def tid(tok, ch: str) -> int:
    (i,) = tok(ch, add_special_tokens=False)["input_ids"]
    return i


def item(choices, answer, prompt="Which?", task="toy"):
    return {"id": f"{task}-{'-'.join(choices)}", "task": task, "category": task, "prompt": prompt,
            "choices": choices, "answer": answer, "split": "test"}


def favour_lm(tok, favoured: dict[int, float]):
    """A Hugging Face LM whose logits ignore the input, as :class:`Favour`'s: attention and MLP
    outputs zero, every token embedded alike, the head reading the favoured values off it."""
    from devft_lab.core.models import tiny_model

    model, _ = tiny_model("llama", num_layers=1, hidden=16, seed=0)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        head = torch.zeros(len(tok), 16)
        for t, value in favoured.items():
            head[t, 0] = value
        model.lm_head.weight = nn.Parameter(head)  # untied from the embedding
    return model


def test_loglikelihoods_are_the_sum_over_choice_tokens(tok):
    model = favour_lm(tok, {tid(tok, "b"): 10.0, tid(tok, " "): 5.0})
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits[0]
    assert torch.allclose(logits[0], logits[2])  # the same vector at every position
    logp = torch.log_softmax(logits[0], -1)
    lls = choice_loglikelihoods(model, tok, [item(["b", "bb", "c"], 0)], template="plain")[0]
    expected = [float(logp[tid(tok, " ")] + k * logp[tid(tok, ch)]) for k, ch in ((1, "b"), (2, "b"), (1, "c"))]
    assert lls == pytest.approx(expected, abs=1e-4)


def test_known_answers_are_found_raw_and_length_normalised(tok):
    model = favour_lm(tok, {tid(tok, "b"): 10.0, tid(tok, " "): 5.0})
    rows = score_multiple_choice(model, tok, [item(["a", "b", "c"], 1), item(["b", "bb"], 0),
                                              item(["b", "bb"], 1)], template="plain")
    assert [r["pred"] for r in rows] == [1, 0, 0]  # raw sum: one more 'b' costs a little
    assert [r["pred_norm"] for r in rows] == [1, 1, 1]  # per character: " bb" beats " b"
    assert [r["correct"] for r in rows] == [True, True, False]
    assert [r["correct_norm"] for r in rows] == [True, False, True]


def test_exact_match_on_toy_model(tok):
    eos = tok.eos_token_id
    model = Favour(len(tok), {tid(tok, "y"): 9.0})
    model.logits.data[eos] = 0.0
    assert exact_match(model, tok, [item(["yyyy", "no"], 0)], template="plain", max_new_tokens=4) == 100.0
    assert exact_match(model, tok, [item(["yyyy", "no"], 1)], template="plain", max_new_tokens=4) == 0.0
    assert answer_matches(" The Answer.", "the answer") and not answer_matches("no", "yes")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_works_on_peft_and_submodels(tiny):
    from peft import LoraConfig, get_peft_model

    from devft_lab.core import layers

    model, tok = tiny
    items = [item(["yes", "no"], 0, prompt="Is it?")]
    base = choice_loglikelihoods(model, tok, items, template="plain")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora = choice_loglikelihoods(peft_model, tok, items, template="plain")[0]
    assert lora == pytest.approx(base[0], abs=1e-4)  # LoRA B starts at 0
    peft_model.unload()
    sub = layers.with_layers(model, [layers.decoder_layers(model)[i] for i in (0, 1)])
    assert len(choice_loglikelihoods(sub, tok, items, template="plain")[0]) == 2


def test_evaluate_suites_smoke_on_tiny_llama(tiny):
    model, tok = tiny
    out = evaluate_suites(model, tok, ["indist", "mmlu"], max_per_task=2, template="plain")
    assert set(out["suites"]) == {"indist", "mmlu"}
    assert out["n"] == len(out["items"]) == sum(s["n"] for s in out["suites"].values())
    assert all(0 <= s["acc"] <= 100 for s in out["suites"].values())
    assert out["avg"] == pytest.approx(sum(s["acc"] for s in out["suites"].values()) / 2)
    assert math.isfinite(perplexity(model, tok, ["hello world"]))
