"""Evaluation: perplexity, multiple choice by log-likelihood, exact match, the lab suites.

Multiple choice is scored the way lm-evaluation-harness scores it: the log-likelihood of
each choice's tokens given the prompt; ``acc`` takes the choice with the highest sum,
``acc_norm`` the highest sum divided by the choice's length in characters. Prompt and
choice are rendered by a :class:`~devft_lab.data.templates.PromptTemplate` and tokenised
separately, exactly as :func:`devft_lab.core.train.encode_example` does for training.

Every scorer runs under ``torch.no_grad`` in eval mode. Multiple choice takes a Hugging Face
causal LM (a PEFT model or a devft_lab submodel included) and runs one path: the prefix common
to all prompts (e.g. the chat template's system turn) once per call, its KV cache shared; then
items packed several to a row of a forward pass, each item's prompt once for all its choices,
under a tree-shaped attention mask. ``tests/test_evaluate_reference.py`` keeps the plain scorer
(one full sequence per choice) that this path must equal.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from devft_lab.core.layers import decoder_and_head, unwrap
from devft_lab.core.packing import first_fit_decreasing
from devft_lab.data.lab import expand_suites, load_suite, suite_cap
from devft_lab.data.records import normalise_text
from devft_lab.data.templates import PromptTemplate, get_template
from devft_lab.stats import summarise


def scorer_digest() -> str:
    """A digest of this module's source: evaluations kept across runs (the untrained model's,
    :func:`devft_lab.runner.run.base_eval_cache`) are keyed on it, so a changed scorer scores anew."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


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
    from transformers import PreTrainedModel  # optional/heavy: transformers

    return isinstance(unwrap(model), PreTrainedModel)


def _cache_kwarg(model) -> str:
    """The forward keyword of the KV cache: ``cache`` in recent transformers 5.x,
    ``past_key_values`` before (the old name is deprecated, to be removed in 5.40)."""
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


def _windowed(mask: torch.Tensor, pos: torch.Tensor, k: int, window: int) -> torch.Tensor:
    """``mask`` cut to a sliding window: a query at position ``q`` sees keys at positions above
    ``q - window`` (transformers' ``sliding_window_overlay``); ``pos``: the rows' position ids."""
    keys = torch.cat([torch.arange(k, device=pos.device).expand(len(pos), k), pos], dim=1)
    return mask & (keys[:, None, None, :] > pos[:, None, :, None] - window)


def _attention_masks(model, mask: torch.Tensor, pos: torch.Tensor, k: int, window: int | None) -> Any:
    """The attention mask(s) a pass hands the model: ``mask`` itself, or, where ``window`` is given
    (a pass holding an item longer than the model's sliding window), the windowed mask for
    sliding layers, by layer type where the model mixes types (Gemma 3)."""
    if window is None:
        return mask
    near = _windowed(mask, pos, k, window)
    types = set(getattr(unwrap(model).config, "layer_types", None) or ())
    if not types:
        return near
    return {t: near if t == "sliding_attention" else mask for t in types}


@torch.no_grad()
def _ll_tree(model, rows: Sequence[Sequence[tuple[list[int], list[list[int]]]]], pad: int, device,
             prefix: tuple[int, Any] = (0, None), window: int | None = None) -> list[list[list[float]]]:
    """Choice log-likelihoods of several rows of items in one forward pass.

    Each row packs one or more items end to end (:func:`_tree_segment`, positions restarting
    after the shared prefix for each) under a tree-shaped attention mask (:func:`_tree_mask`),
    after the shared prefix's KV cache: the same numbers as one full sequence per choice.
    ``window``: cut the mask of sliding layers to it (:func:`_attention_masks`).
    Returns, per row, per item, one log-likelihood per choice.
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
    pos = pos.to(device)
    mask = _attention_masks(model, _tree_mask(layout, n, k, device), pos, k, window)
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
    masks too: a pass holding an item (the shared prefix included) longer than the window gets
    windowed masks (:func:`_attention_masks`); packed rows may be longer, since the mask keeps
    each item to itself."""
    cfg = unwrap(model).config
    return getattr(cfg, "sliding_window", None) or getattr(getattr(cfg, "text_config", None), "sliding_window", None)


# --------------------------------------------------------------------------- multiple choice
@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, items: Sequence[dict[str, Any]],
                          template: str | PromptTemplate = "chat", max_tokens: int = 4096,
                          row_tokens: int = 128) -> list[list[float]]:
    """Sum log-likelihood of every choice of every item (``items``: closed-ended records).

    Several items and all their choices per forward pass, up to ``max_tokens`` tokens (padding
    included) a pass, short items packed end to end into rows of up to ``row_tokens`` tokens
    (:func:`_plan_passes`), after the KV cache of the prefix common to all prompts.
    ``model``: a Hugging Face causal LM (PEFT-wrapped or not).
    """
    if not _is_hf(model):
        raise TypeError(f"choice_loglikelihoods scores Hugging Face causal LMs (a PEFT model or a devft_lab "
                        f"submodel included), got {type(unwrap(model)).__name__}; load the model with "
                        "devft_lab.core.models.load_model or transformers' AutoModelForCausalLM.")
    tmpl = get_template(template)
    device, pad = _device(model), _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        encoded = [_encode(tokenizer, tmpl, it) for it in items]
        if not encoded:
            return []
        window = _sliding_window(model)
        k = _common_prefix([p for p, _ in encoded])
        if window is not None:  # the sliding layers' cache keeps window - 1 tokens
            k = min(k, window - 1)
        prefix = (k, _cache_of(model(input_ids=torch.tensor([encoded[0][0][:k]], device=device),
                                     use_cache=True, logits_to_keep=1))) if k else (0, None)
        lengths = [len(p) - k + sum(len(c) - 1 for c in cs) for p, cs in encoded]
        long = [window is not None and k + n > window for n in lengths]
        out: list[list[float] | None] = [None] * len(encoded)
        for group, cut in (([i for i, x in enumerate(long) if not x], None),  # items longer than the
                           ([i for i, x in enumerate(long) if x], window)):  # window: passes of their own
            for rows in (_plan_passes([lengths[i] for i in group], max_tokens, row_tokens) if group else []):
                rows = [[group[j] for j in row] for row in rows]
                scored = _ll_tree(model, [[encoded[i] for i in row] for row in rows], pad, device, prefix, cut)
                for row, row_lls in zip(rows, scored):
                    for i, lls in zip(row, row_lls):
                        out[i] = lls
        return out  # type: ignore[return-value]
    finally:
        model.train(was_training)


def score_multiple_choice(model, tokenizer, items: Sequence[dict[str, Any]],
                          template: str | PromptTemplate = "chat", max_tokens: int = 4096,
                          row_tokens: int = 128) -> list[dict[str, Any]]:
    """Per item: ``{"id", "task", "pred", "pred_norm", "correct", "correct_norm", "answer_nll", "lls"}``.

    ``pred`` maximises the summed log-likelihood; ``pred_norm`` the log-likelihood per
    character of the choice as rendered (lm-evaluation-harness ``acc_norm``); ``answer_nll`` is
    the held-out response-token loss: the correct choice's negative log-likelihood per token
    (continuous, so it moves before accuracy does). ``max_tokens``, ``row_tokens``: the pass
    and row sizes of :func:`choice_loglikelihoods` (speed only).
    """
    tmpl = get_template(template)
    lls = choice_loglikelihoods(model, tokenizer, items, tmpl, max_tokens, row_tokens)
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
                    seed: int = 0, template: str = "chat", max_per_file: int | None = None) -> dict[str, Any]:
    """Score ``model`` on lab suites (see :data:`devft_lab.data.lab.SUITES`; ``"lab"`` = all) and
    your own ``.jsonl`` files.

    ``max_per_task`` caps the items per task of the lab suites, ``max_per_file`` those of your
    files (None: the whole file; :func:`devft_lab.data.lab.suite_cap`).
    Returns ``{"avg", "avg_norm", "n", "suites": {suite: {"acc", "acc_norm", "n", "tasks": {...}}},
    "items": [per-item rows], "seconds", "cpu_seconds", "template", "max_per_task", "seed"}``; accuracies in
    percent; ``avg`` is the macro average over suites of the macro average over their tasks.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    for name in expand_suites(suites):
        items = load_suite(name, max_per_task=suite_cap(name, max_per_task, max_per_file), seed=seed)
        for r in score_multiple_choice(model, tokenizer, items, template):
            r["suite"] = name
            rows.append(r)
    out = summarise(rows)
    out.update(items=rows, seconds=round(time.perf_counter() - t0, 2),
               cpu_seconds=round(time.process_time() - c0, 2), template=template,
               max_per_task=max_per_task, max_per_file=max_per_file, seed=seed)
    return out
