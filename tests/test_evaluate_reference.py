"""The scorer (several items and their choices per forward pass under a tree attention mask,
after a shared prefix's KV cache) equals the plain scorer kept here as the reference: one full
sequence per choice, the model's own causal (and sliding-window) masks."""
from __future__ import annotations

import pytest
import torch

from devft_lab.core.evaluate import _plan_passes, choice_loglikelihoods, score_multiple_choice
from devft_lab.core.models import tiny_model
from devft_lab.data.lab import expand_suites, load_suite
from devft_lab.data.templates import get_template


@torch.no_grad()
def reference_lls(model, tokenizer, item: dict, template: str = "chat") -> list[float]:
    """The plain one-item scorer: per choice, the prompt and the choice as one sequence, and the
    sum of the choice tokens' log-probabilities (lm-evaluation-harness ``loglikelihood``)."""
    tmpl = get_template(template)
    prompt = tokenizer(tmpl.prompt(item, tokenizer), add_special_tokens=tmpl.adds_special_tokens)["input_ids"]
    was = model.training
    model.eval()
    out = []
    for choice in item["choices"]:
        c = tokenizer(tmpl.response(choice), add_special_tokens=False)["input_ids"]
        logits = model(input_ids=torch.tensor([list(prompt) + list(c)])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(c))))
    model.train(was)
    return out


def assert_equals_reference(model, tok, items, template, got, abs_tol=1e-4):
    ref = [reference_lls(model, tok, it, template) for it in items]
    assert [len(g) for g in got] == [len(it["choices"]) for it in items]
    worst = max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r))
    assert worst < abs_tol, f"scorer and reference differ by {worst}"
    assert [max(range(len(g)), key=g.__getitem__) for g in got] == \
        [max(range(len(r)), key=r.__getitem__) for r in ref]  # the same predicted choice


@pytest.fixture(scope="module")
def small():
    return tiny_model("llama", num_layers=2, hidden=32, seed=3)


def item(choices, answer, prompt):
    return {"id": prompt, "task": "toy", "category": "toy", "prompt": prompt, "choices": choices,
            "answer": answer, "split": "test"}


def test_every_committed_lab_item_scores_as_the_reference(small):
    model, tok = small
    items = [it for s in expand_suites("lab") for it in load_suite(s)]
    assert len(items) >= 440
    rows = score_multiple_choice(model, tok, items, "chat")
    lls = choice_loglikelihoods(model, tok, items, "chat", row_tokens=2048)  # several items a row
    ref = [reference_lls(model, tok, it, "chat") for it in items]
    assert max(abs(a - b) for r, ll in zip(ref, lls) for a, b in zip(r, ll)) < 1e-3
    assert max(abs(a - b) for r, row in zip(ref, rows) for a, b in zip(r, row["lls"])) < 1e-3
    assert [row["pred"] for row in rows] == [max(range(len(r)), key=r.__getitem__) for r in ref]


@pytest.mark.parametrize("max_tokens, row_tokens", [(1, 1), (64, 1), (10_000, 1), (10_000, 10_000)])
def test_single_token_choices_unequal_prompts_and_any_pass_size(small, max_tokens, row_tokens):
    model, tok = small  # one item a pass, a few, all, all in one row
    items = [item(["a", "b", "c"], 0, "Q?"), item(["yes", "no", "a much longer choice"], 1, "Is it? " * 9),
             item(["x"], 0, "only one choice here")]
    got = choice_loglikelihoods(model, tok, items, "plain", max_tokens=max_tokens, row_tokens=row_tokens)
    assert_equals_reference(model, tok, items, "plain", got)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_items_on_a_random_model_score_as_the_reference(seed):
    model, tok = tiny_model("llama", num_layers=2, hidden=32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    words = ["cat", "a dog", "the", "blue sky", "x", "forty-two", "no", "yes it is"]

    def pick(n):
        return " ".join(words[int(i)] for i in torch.randint(len(words), (n,), generator=g))

    items = [item([pick(1 + int(torch.randint(3, (1,), generator=g))) for _ in range(2 + i % 3)], 0,
                  pick(1 + i)) for i in range(12)]
    got = choice_loglikelihoods(model, tok, items, "chat", max_tokens=256, row_tokens=64)
    assert_equals_reference(model, tok, items, "chat", got)


def test_a_trained_looking_adapter_scores_as_the_reference():
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model("llama", num_layers=2, hidden=32, seed=5)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    items = [item(["yes", "no"], 0, "Is it?"), item(["a", "bb", "ccc"], 2, "Which one " * 3)]
    got = choice_loglikelihoods(peft_model, tok, items, "plain")
    assert_equals_reference(peft_model, tok, items, "plain", got)


def test_sliding_window_model_scores_as_the_reference():
    model, tok = tiny_model("gemma3", num_layers=3, hidden=32, seed=1)  # window of 16 tokens; the last
    # items are longer (passes of their own, windowed), the others share a row longer than the window
    items = [item(["a", "b"], 0, "Q?"), item(["no", "yes"], 1, "Is?"), item(["x", "y", "z"], 2, "W"),
             item(["ab", "c"], 0, "Hm?"), item(["long one", "b"], 1, "A prompt longer than the window"),
             item(["a much longer choice than that", "b"], 0, "And a second prompt past the window")]
    got = choice_loglikelihoods(model, tok, items, "plain", row_tokens=1000)
    assert_equals_reference(model, tok, items, "plain", got)


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


def test_only_language_models_are_scored():
    _, tok = tiny_model("llama", num_layers=1, hidden=16)
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        choice_loglikelihoods(torch.nn.Linear(2, 2), tok, [item(["a"], 0, "Q")], "plain")
