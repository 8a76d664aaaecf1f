"""Batched multiple-choice scoring (several items and their choices per forward pass under a
tree attention mask) gives the same log-likelihoods and accuracies as the two-pass scorer."""
from __future__ import annotations

import pytest

from devft_lab.core.evaluate import _batches_by_tokens, choice_loglikelihoods, score_multiple_choice
from devft_lab.core.models import tiny_model
from devft_lab.data.lab import expand_suites, load_suite


@pytest.fixture(scope="module")
def small():
    # few layers: the old path's cost is one call per item, so keep the model cheap
    return tiny_model("llama", num_layers=2, hidden=32, seed=3)


def item(choices, answer, prompt):
    return {"id": prompt, "task": "toy", "category": "toy", "prompt": prompt, "choices": choices,
            "answer": answer, "split": "test"}


def test_every_committed_lab_item_scores_the_same_batched_and_one_at_a_time(small):
    model, tok = small
    items = [it for s in expand_suites("lab") for it in load_suite(s)]
    assert len(items) >= 440
    old = score_multiple_choice(model, tok, items, "chat", batched=False)
    new = score_multiple_choice(model, tok, items, "chat", batched=True)
    assert [r["pred"] for r in new] == [r["pred"] for r in old]
    assert [r["pred_norm"] for r in new] == [r["pred_norm"] for r in old]
    assert max(abs(a - b) for r, s in zip(old, new) for a, b in zip(r["lls"], s["lls"])) < 1e-3


def test_single_token_choices_unequal_prompts_and_tiny_batches(small):
    model, tok = small
    items = [item(["a", "b", "c"], 0, "Q?"), item(["yes", "no", "a much longer choice"], 1, "Is it? " * 9),
             item(["x"], 0, "only one choice here")]
    old = choice_loglikelihoods(model, tok, items, "plain", batched=False)
    for max_tokens in (1, 64, 10_000):  # one item a pass, a few, all
        new = choice_loglikelihoods(model, tok, items, "plain", batched=True, max_tokens=max_tokens)
        for o, n in zip(old, new):
            assert n == pytest.approx(o, abs=1e-4)


def test_batches_cover_every_item_once_within_the_token_budget():
    lengths = [5, 50, 7, 30, 30, 2, 64]
    groups = _batches_by_tokens(lengths, max_tokens=64)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 64
