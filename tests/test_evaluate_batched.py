"""Batched multiple-choice scoring (several items and their choices per forward pass under a
tree attention mask) gives the same log-likelihoods and accuracies as the two-pass scorer."""
from __future__ import annotations

import pytest

from devft_lab.core.evaluate import _plan_passes, choice_loglikelihoods, score_multiple_choice
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
    packed = choice_loglikelihoods(model, tok, items, "chat", row_tokens=2048)  # several items a row
    assert max(abs(a - b) for r, lls in zip(old, packed) for a, b in zip(r["lls"], lls)) < 1e-3
    new = score_multiple_choice(model, tok, items, "chat", batched=True)
    assert [r["pred"] for r in new] == [r["pred"] for r in old]
    assert [r["pred_norm"] for r in new] == [r["pred_norm"] for r in old]
    assert max(abs(a - b) for r, s in zip(old, new) for a, b in zip(r["lls"], s["lls"])) < 1e-3


def test_single_token_choices_unequal_prompts_and_tiny_batches(small):
    model, tok = small
    items = [item(["a", "b", "c"], 0, "Q?"), item(["yes", "no", "a much longer choice"], 1, "Is it? " * 9),
             item(["x"], 0, "only one choice here")]
    old = choice_loglikelihoods(model, tok, items, "plain", batched=False)
    for max_tokens, row_tokens in ((1, 1), (64, 1), (10_000, 1), (10_000, 10_000)):  # one item a pass, a
        new = choice_loglikelihoods(model, tok, items, "plain", batched=True,  # few, all, all in one row
                                    max_tokens=max_tokens, row_tokens=row_tokens)
        for o, n in zip(old, new):
            assert n == pytest.approx(o, abs=1e-4)


@pytest.mark.parametrize("max_tokens, row_tokens", [(64, 1), (64, 16), (200, 32), (1, 1)])
def test_passes_cover_every_item_once_in_rows_that_fit(max_tokens, row_tokens):
    lengths = [5, 50, 7, 30, 30, 2, 64, 11, 1, 33]
    passes = _plan_passes(lengths, max_tokens, row_tokens)
    assert sorted(i for rows in passes for row in rows for i in row) == list(range(len(lengths)))
    for rows in passes:
        size = [sum(lengths[i] for i in row) for row in rows]
        assert all(row for row in rows)
        assert all(s <= row_tokens or len(row) == 1 for s, row in zip(size, rows))  # long items alone
        assert len(rows) == 1 or len(rows) * max(size) <= max_tokens
        assert min(size) >= 0.85 * max(size)  # padding at most 15 %


def test_packing_removes_the_padding_of_mixed_lengths():
    lengths = [100] + [10] * 30  # one item a row: 31 rows padded to 100 tokens
    passes = _plan_passes(lengths, max_tokens=400, row_tokens=50)
    padded = sum(len(rows) * max(sum(lengths[i] for i in row) for row in rows) for rows in passes)
    assert padded <= 1.1 * sum(lengths)


def test_sliding_window_model_scores_the_same_packed():
    model, tok = tiny_model("gemma3", num_layers=3, hidden=32, seed=1)  # window of 16 tokens; the last
    # item is longer (scored in two passes), the others share a row longer than the window
    items = [item(["a", "b"], 0, "Q?"), item(["no", "yes"], 1, "Is?"), item(["x", "y", "z"], 2, "W"),
             item(["ab", "c"], 0, "Hm?"), item(["long one", "b"], 1, "A prompt longer than the window")]
    old = choice_loglikelihoods(model, tok, items, "plain", batched=False)
    new = choice_loglikelihoods(model, tok, items, "plain", batched=True, row_tokens=1000)
    for o, n in zip(old, new):
        assert n == pytest.approx(o, abs=1e-4)
