"""Evaluation: perplexity, multiple choice by log-likelihood, exact match, the lab suites.

Multiple choice is scored the way lm-evaluation-harness scores it: the log-likelihood of
each choice's tokens given the prompt; ``acc`` takes the choice with the highest sum,
``acc_norm`` the highest sum divided by the choice's length in characters. Prompt and
choice are rendered by a :class:`~devft_lab.data.templates.PromptTemplate` and tokenised
separately, exactly as :func:`devft_lab.core.train.encode_example` does for training.

Every scorer runs under ``torch.no_grad`` in eval mode and accepts a Hugging Face causal
LM, a PEFT model, a devft_lab submodel, or any module called as
``model(input_ids=..., attention_mask=...)`` that returns ``.logits``. For Hugging Face
models (PEFT included) the prompt is run once per item for all its choices, and items are
packed several to a row of a forward pass under a tree-shaped attention mask (the prefix
common to all prompts, e.g. the chat template's system turn, is run once per call and its KV
cache shared); other modules get one full sequence per choice.
"""
from __future__ import annotations

import copy
import math
import re
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from devft_lab.core.layers import decoder_and_head, unwrap
from devft_lab.core.packing import first_fit_decreasing
from devft_lab.data.records import normalise_text
from devft_lab.data.templates import PromptTemplate, get_template
from devft_lab.stats import summarise


# Bumped when a change to the scorer can move its numbers (even by float rounding): cached
# evaluations of the untrained model (devft_lab.runner.run.base_eval_cache) are keyed on it.
# 2: items packed several to a row (2026-12-07).
SCORER_VERSION = 2


# --------------------------------------------------------------------------- perplexity
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


# --------------------------------------------------------------------------- helpers
def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _is_hf(model) -> bool:
    """A transformers model (or a PEFT wrapper around one): it takes a KV cache."""
    from transformers import PreTrainedModel

    return isinstance(unwrap(model), PreTrainedModel)


def _cache_kwarg(model) -> str:
    """The forward keyword of the KV cache: ``cache`` in recent transformers 5.x,
    ``past_key_values`` before (the old name is deprecated, to be removed in 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


def _cache_of(out) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _encode(tokenizer, tmpl: PromptTemplate, item: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and one id list per choice (the choice as the template renders a response)."""
    prompt = tmpl.prompt(item, tokenizer)
    p_ids = tokenizer(prompt, add_special_tokens=tmpl.adds_special_tokens)["input_ids"]
    c_ids = [tokenizer(tmpl.response(c), add_special_tokens=False)["input_ids"] for c in item["choices"]]
    if not p_ids or any(len(c) == 0 for c in c_ids):
        raise ValueError(f"item {item.get('id')!r}: empty prompt or choice after tokenisation.")
    return list(p_ids), [list(c) for c in c_ids]


def _pad_id(tokenizer) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    return int(pid) if pid is not None else 0


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    """Length of the longest common prefix of ``seqs``, leaving every sequence one token."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


@torch.no_grad()
def _ll_shared(model, p_ids: list[int], c_ids: list[list[int]], pad: int, device,
               prefix: tuple[int, Any] = (0, None)) -> list[float]:
    """Choice log-likelihoods with the prompt run once and its KV cache shared (HF models).

    ``prefix = (k, cache)``: the KV cache of the first ``k`` prompt tokens (the chat
    template's system turn, common to all items), copied rather than recomputed.
    """
    k, prefix_cache = prefix
    kw = _cache_kwarg(model)
    cache = copy.deepcopy(prefix_cache) if k else None
    out = model(input_ids=torch.tensor([p_ids[k:]], device=device), **{kw: cache},
                use_cache=True, logits_to_keep=1)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    lls = [float(first[c[0]]) for c in c_ids]
    rest = [i for i, c in enumerate(c_ids) if len(c) > 1]
    if rest:
        cache = _cache_of(out)
        if len(rest) > 1:
            cache.batch_repeat_interleave(len(rest))
        m = max(len(c_ids[i]) - 1 for i in rest)
        ids = torch.full((len(rest), m), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rest), len(p_ids) + m), dtype=torch.long, device=device)
        mask[:, : len(p_ids)] = 1
        for r, i in enumerate(rest):
            k = len(c_ids[i]) - 1
            ids[r, :k] = torch.tensor(c_ids[i][:-1])
            mask[r, len(p_ids): len(p_ids) + k] = 1
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask, **{kw: cache},
                                   use_cache=True).logits.float(), dim=-1)
        for r, i in enumerate(rest):
            tgt = torch.tensor(c_ids[i][1:], device=device)
            lls[i] += float(logp[r, torch.arange(len(tgt), device=device), tgt].sum())
    return lls


def _tree_segment(p_ids: list[int], c_ids: list[list[int]], k: int) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """One item as a segment of a row: the prompt after the shared prefix, then every choice but its last token.

    Returns ``(ids, positions, spans)``, where ``spans[i] = (start, length)`` locates choice
    ``i``'s tokens in the segment. Each choice's first token is predicted from the prompt's
    last position, its later tokens from its own earlier ones.
    """
    ids, pos = list(p_ids[k:]), list(range(k, len(p_ids)))
    spans = []
    for c in c_ids:
        spans.append((len(ids), len(c) - 1))
        ids += c[:-1]
        pos += list(range(len(p_ids), len(p_ids) + len(c) - 1))
    return ids, pos, spans


def _tree_mask(rows: Sequence[Sequence[tuple[int, int, list[tuple[int, int]]]]], n: int, k: int, device) -> torch.Tensor:
    """Boolean ``(B, 1, n, k + n)`` mask for rows of packed segments, each ``(offset, prompt length, spans)``.

    The shared prefix is seen by all; inside a segment the prompt is causal and each choice
    sees its segment's prompt and its own earlier tokens, never another choice or another
    segment (padding sees the prefix and itself, so no attention row is empty).
    """
    mask = torch.zeros((len(rows), 1, n, k + n), dtype=torch.bool)
    mask[:, :, :, :k] = True
    mask[:, 0, :, k:] |= torch.eye(n, dtype=torch.bool)
    for r, segments in enumerate(rows):
        for o, p, spans in segments:
            mask[r, 0, o:o + p, k + o:k + o + p] = torch.tril(torch.ones(p, p, dtype=torch.bool))
            for start, length in spans:
                a = o + start
                mask[r, 0, a:a + length, k + o:k + o + p] = True
                mask[r, 0, a:a + length, k + a:k + a + length] = torch.tril(torch.ones(length, length, dtype=torch.bool))
    return mask.to(device)


@torch.no_grad()
def _ll_tree(model, rows: Sequence[Sequence[tuple[list[int], list[list[int]]]]], pad: int, device,
             prefix: tuple[int, Any] = (0, None)) -> list[list[list[float]]]:
    """Choice log-likelihoods of several rows of items in one forward pass (HF models).

    Each row packs one or more items end to end (:func:`_tree_segment`, positions restarting
    after the shared prefix for each) under a tree-shaped attention mask (:func:`_tree_mask`),
    after the shared prefix's KV cache: the same numbers as :func:`_ll_shared`, which runs
    two passes per item. Returns, per row, per item, one log-likelihood per choice.
    """
    k, prefix_cache = prefix
    layout = []  # per row: per item (offset, prompt length, spans)
    row_ids, row_pos = [], []
    for items in rows:
        ids, pos, segs = [], [], []
        for p_ids, c_ids in items:
            s_ids, s_pos, spans = _tree_segment(p_ids, c_ids, k)
            segs.append((len(ids), len(p_ids) - k, spans))
            ids += s_ids
            pos += s_pos
        layout.append(segs)
        row_ids.append(ids)
        row_pos.append(pos)
    n = max(len(ids) for ids in row_ids)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), n), dtype=torch.long)
    for r, (r_ids, r_pos) in enumerate(zip(row_ids, row_pos)):
        ids[r, :len(r_ids)] = torch.tensor(r_ids)
        pos[r, :len(r_pos)] = torch.tensor(r_pos)
        pos[r, len(r_pos):] = r_pos[-1] if r_pos else k
    cache = None
    if k:
        cache = copy.deepcopy(prefix_cache)
        if len(rows) > 1:
            cache.batch_repeat_interleave(len(rows))
    mask, pos = _tree_mask(layout, n, k, device), pos.to(device)
    # the language-model head only at the (row, position) pairs where a choice token is
    # predicted: most of a row is prompt, and with a 49k vocabulary its logits (and their
    # log-softmax) would cost more than the attention does
    need = [(r, o + p - 1) for r, segs in enumerate(layout) for o, p, _ in segs]
    need += [(r, o + s + j) for r, segs in enumerate(layout) for o, _, spans in segs
             for s, n_s in spans for j in range(n_s)]
    split = decoder_and_head(model)
    if split is not None:
        decoder, head, cap = split
        hidden = decoder(input_ids=ids.to(device), attention_mask=mask, position_ids=pos,
                         **{_cache_kwarg(decoder): cache}, use_cache=k > 0).last_hidden_state
        logits = head(hidden[torch.tensor([r for r, _ in need]), torch.tensor([p for _, p in need])])
        if cap:
            logits = torch.tanh(logits / cap) * cap
        row_of = {rp: j for j, rp in enumerate(need)}
    else:  # any other HF-like module: logits at the union of the rows' positions
        wanted = sorted({p for _, p in need})
        out = model(input_ids=ids.to(device), attention_mask=mask, position_ids=pos,
                    **{_cache_kwarg(model): cache}, use_cache=k > 0, logits_to_keep=torch.tensor(wanted, device=device))
        col = {p: j for j, p in enumerate(wanted)}
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        row_of = {(r, p): r * len(wanted) + col[p] for r, p in need}
    logp = F.log_softmax(logits.float(), dim=-1)
    result = []
    for r, (items, segs) in enumerate(zip(rows, layout)):
        per_item = []
        for (_, c_ids), (o, p, spans) in zip(items, segs):
            lls = []
            for c, (start, length) in zip(c_ids, spans):
                at = torch.tensor([row_of[r, o + p - 1]] + [row_of[r, o + start + j] for j in range(length)],
                                  device=device)
                lls.append(float(logp[at, torch.tensor(c, device=device)].sum()))
            per_item.append(lls)
        result.append(per_item)
    return result


def _plan_passes(lengths: Sequence[int], max_tokens: int, row_tokens: int,
                 max_padding: float = 0.15) -> list[list[list[int]]]:
    """Item indices as forward passes of rows, packed so that padding nearly disappears.

    Items are packed first fit, longest first, into rows of ``row_tokens`` tokens (a longer
    item gets a row of its own). Rows, longest first, then share a pass while the pass stays
    within ``max_tokens`` (padding included) and no row is padded by more than ``max_padding``
    of the pass's row length. Short rows keep attention, whose cost grows with the square of
    a row's length, cheap.
    """
    rows = [(sum(lengths[i] for i in row), row) for row in first_fit_decreasing(lengths, row_tokens)]
    passes: list[list[list[int]]] = []
    n = 0  # the current pass's row length
    for size, row in sorted(rows, key=lambda sr: -sr[0]):
        if passes and (len(passes[-1]) + 1) * n <= max_tokens and size >= (1 - max_padding) * n:
            passes[-1].append(row)
        else:
            passes.append([row])
            n = size
    return passes


def _sliding_window(model) -> int | None:
    """The model's sliding attention window, if any. A custom 4D mask replaces sliding-window
    masks too, so an item (the shared prefix included) must fit inside the window; packed rows
    may be longer, since the mask keeps each item to itself."""
    cfg = unwrap(model).config
    return getattr(cfg, "sliding_window", None) or getattr(getattr(cfg, "text_config", None), "sliding_window", None)


@torch.no_grad()
def _ll_full(model, seqs: list[tuple[list[int], list[int]]], pad: int, device, batch_size: int) -> list[float]:
    """Log-likelihood of each continuation given its context, one full sequence each."""
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    out = [0.0] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        n = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
        ids = torch.full((len(idx), n), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), n), dtype=torch.long, device=device)
        for r, i in enumerate(idx):
            s = seqs[i][0] + seqs[i][1]
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for r, i in enumerate(idx):
            p, c = seqs[i]
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)
            out[i] = float(logp[r, pos, torch.tensor(c, device=device)].sum())
    return out


# --------------------------------------------------------------------------- multiple choice
@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, items: Sequence[dict[str, Any]],
                          template: str | PromptTemplate = "chat", batch_size: int = 16,
                          share_prefix: bool | None = None, batched: bool = True,
                          max_tokens: int = 4096, row_tokens: int = 128) -> list[list[float]]:
    """Sum log-likelihood of every choice of every item (``items``: closed-ended records).

    ``share_prefix``: run the prompt once and share its KV cache across the choices
    (default: on for Hugging Face / PEFT models, off for any other module).
    ``batched`` (HF models): several items and all their choices per forward pass, up to
    ``max_tokens`` tokens (padding included) a pass, short items packed end to end into rows of
    up to ``row_tokens`` tokens (:func:`_plan_passes`); ``False``: two passes per item.
    """
    tmpl = get_template(template)
    device, pad = _device(model), _pad_id(tokenizer)
    share = _is_hf(model) if share_prefix is None else share_prefix
    was_training = model.training
    model.eval()
    try:
        encoded = [_encode(tokenizer, tmpl, it) for it in items]
        if share:
            k = _common_prefix([p for p, _ in encoded])
            prefix = (k, _cache_of(model(input_ids=torch.tensor([encoded[0][0][:k]], device=device),
                                         use_cache=True, logits_to_keep=1))) if k else (0, None)
            if not batched:
                return [_ll_shared(model, p, cs, pad, device, prefix) for p, cs in encoded]
            lengths = [len(p) - k + sum(len(c) - 1 for c in cs) for p, cs in encoded]
            out: list[list[float] | None] = [None] * len(encoded)
            window = _sliding_window(model)
            fits = []
            for i in range(len(encoded)):
                if window is None or k + lengths[i] <= window:
                    fits.append(i)
                else:  # longer than the window: two passes of its own
                    out[i] = _ll_shared(model, *encoded[i], pad, device, prefix)
            for rows in _plan_passes([lengths[i] for i in fits], max_tokens, row_tokens):
                rows = [[fits[j] for j in row] for row in rows]
                scored = _ll_tree(model, [[encoded[i] for i in row] for row in rows], pad, device, prefix)
                for row, row_lls in zip(rows, scored):
                    for i, lls in zip(row, row_lls):
                        out[i] = lls
            return out  # type: ignore[return-value]
        flat = [(p, c) for p, cs in encoded for c in cs]
        lls = _ll_full(model, flat, pad, device, batch_size)
        out, k = [], 0
        for _, cs in encoded:
            out.append(lls[k : k + len(cs)])
            k += len(cs)
        return out
    finally:
        model.train(was_training)


def score_multiple_choice(model, tokenizer, items: Sequence[dict[str, Any]],
                          template: str | PromptTemplate = "chat", batch_size: int = 16,
                          share_prefix: bool | None = None, batched: bool = True) -> list[dict[str, Any]]:
    """Per item: ``{"id", "task", "pred", "pred_norm", "correct", "correct_norm", "answer_nll", "lls"}``.

    ``pred`` maximises the summed log-likelihood; ``pred_norm`` the log-likelihood per
    character of the choice as rendered (lm-evaluation-harness ``acc_norm``); ``answer_nll`` is
    the held-out response-token loss: the correct choice's negative log-likelihood per token
    (continuous, so it moves before accuracy does).
    """
    tmpl = get_template(template)
    lls = choice_loglikelihoods(model, tokenizer, items, tmpl, batch_size, share_prefix, batched)
    rows = []
    for it, ll in zip(items, lls):
        norm = [v / max(1, len(tmpl.response(c))) for v, c in zip(ll, it["choices"])]
        pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
        n_answer = len(tokenizer(tmpl.response(it["choices"][it["answer"]]), add_special_tokens=False)["input_ids"])
        rows.append({"id": it.get("id"), "task": it.get("task"), "pred": pred, "pred_norm": pred_norm,
                     "correct": pred == it["answer"], "correct_norm": pred_norm == it["answer"],
                     "answer_nll": round(-ll[it["answer"]] / max(1, n_answer), 5),
                     "lls": [round(v, 4) for v in ll]})
    return rows


# --------------------------------------------------------------------------- exact match
@torch.no_grad()
def generate_answers(model, tokenizer, items: Sequence[dict[str, Any]], template: str | PromptTemplate = "chat",
                     max_new_tokens: int = 16) -> list[str]:
    """Greedy short answers (cut at the first newline); ``model.generate`` when it has one."""
    tmpl = get_template(template)
    device = _device(model)
    eos = getattr(tokenizer, "eos_token_id", None)
    was_training = model.training
    model.eval()
    answers = []
    try:
        for it in items:
            ids = tokenizer(tmpl.prompt(it, tokenizer), add_special_tokens=tmpl.adds_special_tokens)["input_ids"]
            x = torch.tensor([ids], device=device)
            if _is_hf(model):
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=_pad_id(tokenizer))[0, len(ids):].tolist()
            else:
                out = []
                for _ in range(max_new_tokens):
                    nxt = int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())
                    if nxt == eos:
                        break
                    out.append(nxt)
                    x = torch.cat([x, torch.tensor([[nxt]], device=device)], dim=1)
            text = tokenizer.decode(out, skip_special_tokens=True).strip()
            answers.append(text.split("\n")[0].strip())
    finally:
        model.train(was_training)
    return answers


def answer_matches(generated: str, gold: str) -> bool:
    """Exact match after normalisation (case, whitespace, surrounding quotes and final period)."""
    def norm(s: str) -> str:
        return re.sub(r"^[\"'(\s]+|[\"'.)\s]+$", "", normalise_text(s))
    return norm(generated) == norm(gold)


def exact_match(model, tokenizer, items: Sequence[dict[str, Any]], template: str | PromptTemplate = "chat",
                max_new_tokens: int = 16) -> float:
    """Percent of items whose greedy answer matches ``choices[answer]`` (see :func:`answer_matches`)."""
    if not items:
        raise ValueError("exact_match needs at least one item.")
    gen = generate_answers(model, tokenizer, items, template, max_new_tokens)
    hits = [answer_matches(g, it["choices"][it["answer"]]) for g, it in zip(gen, items)]
    return 100.0 * sum(hits) / len(hits)


# --------------------------------------------------------------------------- suites
def evaluate_suites(model, tokenizer, suites: Sequence[str] = ("lab",), max_per_task: int | None = None,
                    seed: int = 0, template: str = "chat", batch_size: int = 16,
                    max_per_file: int | None = None) -> dict[str, Any]:
    """Score ``model`` on lab suites (see :data:`devft_lab.data.lab.SUITES`; ``"lab"`` = all) and
    your own ``.jsonl`` files.

    ``max_per_task`` caps the items per task of the lab suites, ``max_per_file`` those of your
    files (None: the whole file; :func:`devft_lab.data.lab.suite_cap`).
    Returns ``{"avg", "avg_norm", "n", "suites": {suite: {"acc", "acc_norm", "n", "tasks": {...}}},
    "items": [per-item rows], "seconds", "cpu_seconds", "template", "max_per_task", "seed"}``; accuracies in
    percent; ``avg`` is the macro average over suites of the macro average over their tasks.
    """
    from devft_lab.data.lab import expand_suites, load_suite, suite_cap

    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    for name in expand_suites(suites):
        items = load_suite(name, max_per_task=suite_cap(name, max_per_task, max_per_file), seed=seed)
        for r in score_multiple_choice(model, tokenizer, items, template, batch_size):
            r["suite"] = name
            rows.append(r)
    out = summarise(rows)
    out.update(items=rows, seconds=round(time.perf_counter() - t0, 2),
               cpu_seconds=round(time.process_time() - c0, 2), template=template,
               max_per_task=max_per_task, max_per_file=max_per_file, seed=seed)
    return out
