"""The general instruction pool and the held-out suite under ``data/general/`` (the paper's regime).

    python -m devft_lab.data.build --pool general            # pip download the evals wheel, write data/general/
    python -m devft_lab.data.build --pool general --check    # rebuild in a temp dir, compare with data/general/

DevFT tunes on *general* instruction data (Alpaca-GPT4) and scores closed-ended benchmarks it
never trained on. This module builds the closest offline stand-in: an instruction pool in chat
form from many tasks of the OpenAI Evals registry (the ``evals`` wheel on PyPI, read as a zip
archive, never installed), none of which is in any evaluation suite, and a closed-ended suite
``heldout`` of further registry tasks that the pool never sees.

* ``train.jsonl``: ``{"id", "category", "messages"}``; ``category`` = task; ``messages`` is the
  task's own chat (system, few-shot and user turns) with the answer as the last, assistant turn.
  Loading adds ``response`` (that turn) and ``instruction`` (the turns before it joined by blank
  lines, for the ``plain`` and ``alpaca`` templates): :func:`~devft_lab.data.records.expand_chat`. At most :data:`POOL_CAP`
  examples a task, drawn with a seed per task, so that no task dominates.
* ``eval_heldout.jsonl``: :data:`N_HELDOUT` items of each of :data:`HELDOUT_TASKS`, in the lab's
  one prompt format (:func:`devft_lab.data.build.render_prompt`).

The BIG-bench sdist the lab data was built from (``bigbench==1.0.0``) no longer has files on
PyPI (its JSON API lists the version with no files), so this pool is built from the evals wheel
alone; see data/README.md.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from devft_lab.data.build import EVALS, SEED, _rng, render_prompt, write_files
from devft_lab.data.records import (DataError, chat_instruction, check_instruction, check_mc_item, compact_chat,
                                     normalise_text)

VERSION = 2  # of data/general (MANIFEST "version"; 2: the pool stores chat examples compactly)
POOL_CAP = 100  # pool examples per task at most (94 tasks: no task is over 1.3 % of the pool)
N_HELDOUT = 20  # held-out items per task (12 tasks: 240 items)
MAX_CHARS = 1000  # instruction + response characters of a pool example (~250 SmolLM2 tokens)
MAX_PROMPT_CHARS = 1000  # task text of a held-out item (system + question, options excluded)
REGISTRY = "evals/registry/data/"
LICENCE = "MIT"  # the evals wheel's LICENSE.md; its list of separately licensed datasets is excluded below

# Instructions that ask for reasoning, explanations or work shown are dropped: the registry's
# answer is only the final answer, so such an example would teach the model to ignore its prompt.
ASKS_FOR_WORK = re.compile(r"step[- ]by[- ]step|show your work|reasoning first|explain your|chain of thought|"
                           r"provide explanations|work through your reasoning|thought process", re.I)


@dataclass(frozen=True)
class PoolTask:
    """One registry task of the pool: its name (the pool's ``category``) and its sample files."""

    name: str
    members: tuple[str, ...]  # paths under evals/registry/data/, read in this order


@dataclass(frozen=True)
class HeldoutTask:
    """One registry task of the held-out suite.

    ``labels``: the task's fixed answer set (its items are the question, the choices are the
    labels); ``None``: the question ends in lettered options (``A. ...``, `` A: ...``, ``a) ...``),
    which become the choices and the letter the answer.
    """

    name: str
    member: str
    labels: tuple[str, ...] | None = None


# Held out from the pool for evaluation (none of them is a BBH or MMLU task): English tasks with
# a fixed answer set or lettered options, >= 100 items, short questions, one answer each. Mixed
# on purpose: knowledge (amateur radio, security certification, medicine, qualitative physics),
# commonsense and ethics (moral exceptions, likelihood change, relative weights), and symbolic
# reasoning (rectangle overlap, falling objects, regex matching, birth order, professional rules).
HELDOUT_TASKS: tuple[HeldoutTask, ...] = (
    HeldoutTask("aba_mrpc_true_false", "aba_mrpc_true_false/samples.jsonl", ("True", "False")),
    HeldoutTask("born_first", "born_first/born_first.jsonl", ("Y", "N")),
    HeldoutTask("cissp_study_questions", "cissp-study-questions/samples.jsonl"),
    HeldoutTask("crepe", "crepe/samples.jsonl", ("more likely", "less likely", "equally likely")),
    HeldoutTask("fcc_amateur_extra", "fcc_amateur_extra/samples.jsonl"),
    HeldoutTask("medmcqa", "medmcqa/samples.jsonl"),
    HeldoutTask("moral_exceptqa", "moral_exceptQA/samples.jsonl", ("Yes", "No")),
    HeldoutTask("physics_interaction", "physics-interaction/samples.jsonl", ("left", "right")),
    HeldoutTask("quartz", "quartz/samples.jsonl"),
    HeldoutTask("rectangles", "rectangles/samples.jsonl", ("Yes", "No")),
    HeldoutTask("regex_match", "regex-match/samples.jsonl", ("Yes.", "No.")),
    HeldoutTask("which_is_heavier", "which_is_heavier/which_is_heavier.jsonl", ("Yes", "No")),
)

# The pool: every registry task evaluated by exact, inclusion or fuzzy match (so the ``ideal``
# is the answer) whose usable items (text <= MAX_CHARS, no request for shown work) number >= 40
# and are English (>= 97 % ASCII), except
#   * the held-out tasks above (the whole data folder),
#   * data the wheel's LICENSE.md licenses separately (sandbagging = the lab's MMLU suite,
#     theory_of_mind, text_compression, steganography, schelling_point, ballots, already_said_that),
#   * tasks in another language or about one (lexicons, rhymes, spelling, part of speech, numerals),
#   * tasks whose skill mirrors an evaluation task: directions, 2d_movement and
#     relative_orientations (BBH navigate), european_date_format_challenge (date_understanding),
#     sarcasm (snarks), corr2cause (causal_judgment),
#   * the two files over 50 MB (diabetes, formal_logic), to keep the build fast.
# Listed by data folder; the task name is the folder with '-' as '_'. The list is what
# ``python -m devft_lab.data.general WHEEL`` prints (:func:`candidates` less :data:`EXCLUDED`).
POOL_TASKS: tuple[PoolTask, ...] = (
    PoolTask('gol', ('GOL/samples.jsonl',)),
    PoolTask('ambiguous_sentences', ('ambiguous-sentences/samples.jsonl',)),
    PoolTask('anagrams', ('anagrams/samples.jsonl',)),
    PoolTask('arc', ('arc/samples.jsonl',)),
    PoolTask('balance_chemical_equation', ('balance_chemical_equation/samples.jsonl',)),
    PoolTask('base64_decode', ('base64_decode/base64_decode.jsonl',)),
    PoolTask('beam_analysis', ('beam_analysis/beam-analysis.jsonl',)),
    PoolTask('benjaminmoore_to_hex', ('benjaminmoore_to_hex/samples.jsonl',)),
    PoolTask('bigrams', ('bigrams/samples.jsonl',)),
    PoolTask('bitwise', ('bitwise/samples.jsonl',)),
    PoolTask('body_movement', ('body_movement/body_movement.jsonl',)),
    PoolTask('building_floorplan', ('building_floorplan/samples.jsonl',)),
    PoolTask('chess', ('chess/match.jsonl',)),
    PoolTask('chess_piece_count', ('chess_piece_count/fuzzy_match.jsonl',)),
    PoolTask('chinese_zodiac', ('chinese_zodiac/samples.jsonl',)),
    PoolTask('color_theory', ('color_theory/complementary.jsonl',)),
    PoolTask('compare_countries_area', ('compare-countries-area/samples.jsonl',)),
    PoolTask('complex_replace_characters', ('complex_replace_characters/samples.jsonl',)),
    PoolTask('comprehensive_graph_reasoning', ('comprehensive-graph-reasoning/samples.jsonl',)),
    PoolTask('convert_hex_hsl_lightness', ('convert-hex-hsl-lightness/samples.jsonl',)),
    PoolTask('count_intersections_polynomial', ('count_intersections_polynomial/samples.jsonl',)),
    PoolTask('count_token_freq_dna', ('count_token_freq_dna/samples.jsonl',)),
    PoolTask('css_selectors', ('css-selectors/verbal.jsonl',)),
    PoolTask('cube_pack', ('cube-pack/samples.jsonl',)),
    PoolTask('cybersecurity', ('cybersecurity/filepaths.jsonl',)),
    PoolTask('decrypt_caesar_cipher', ('decrypt_caesar_cipher/samples.jsonl',)),
    PoolTask('determinant', ('determinant/samples.jsonl',)),
    PoolTask('emotional_intelligence', ('emotional-intelligence/samples.jsonl',)),
    PoolTask('escher_sentences', ('escher_sentences/samples.jsonl',)),
    PoolTask('first_letters', ('first-letters/samples.jsonl',)),
    PoolTask('food', ('food/samples.jsonl',)),
    PoolTask('forth_stack_sim', ('forth_stack_sim/basic_samples.jsonl', 'forth_stack_sim/samples.jsonl')),
    PoolTask('guess_the_singer', ('guess_the_singer/samples.jsonl',)),
    PoolTask('heart_disease', ('heart-disease/samples.jsonl',)),
    PoolTask('imperial_date_to_string', ('imperial_date_to_string/samples.jsonl',)),
    PoolTask('infiniteloop_match', ('infiniteloop-match/infiniteloop-match.jsonl',)),
    PoolTask('integer_sequence_predictions', (
        'integer-sequence-predictions/misc-and-recent-sequences.jsonl',
        'integer-sequence-predictions/notable-sequences.jsonl',
        'integer-sequence-predictions/obscure-sequences.jsonl',
        'integer-sequence-predictions/samples.jsonl',
    )),
    PoolTask('invert_word_wise', ('invert_word_wise/invert.jsonl',)),
    PoolTask('invoices', ('invoices/match.jsonl',)),
    PoolTask('irrelevant_negative_diversion', ('irrelevant-negative-diversion/irrelevant-negative-diversion.jsonl',)),
    PoolTask('knot_theory', (
        'knot-theory/knot-theory-code-conversions.jsonl',
        'knot-theory/knot-theory-unknotting-numbers.jsonl',
        'knot-theory/knot-theory-unknotting-problems.jsonl',
    )),
    PoolTask('largest_country', ('largest_country/samples.jsonl',)),
    PoolTask('last_word_nth', ('last_word_nth/samples.jsonl',)),
    PoolTask('linear_equations', ('linear_equations/samples.jsonl',)),
    PoolTask('list_comparison_missing_name', ('list_comparison_missing_name/samples.jsonl',)),
    PoolTask('logic_statements', ('logic-statements/logic-statements.jsonl',)),
    PoolTask('logiqa_logical_reasoning_plus', (
        'logiqa-logical-reasoning-plus/logiqa-logical-reasoning-plus.jsonl',
        'logiqa-logical-reasoning-plus/logiqav2-logical-reasoning-plus.jsonl',
    )),
    PoolTask('mandaliof_table', ('mandaliof-table/samples.jsonl',)),
    PoolTask('map_electronic_component_part_to_fact', ('map-electronic-component-part-to-fact/samples.jsonl',)),
    PoolTask('mapping_to_matricies', ('mapping_to_matricies/samples.jsonl',)),
    PoolTask('mate_in_one', ('mate-in-one/samples.jsonl',)),
    PoolTask('math_equations', ('math_equations/math_equations.jsonl',)),
    PoolTask('matrix_mult_rows', ('matrix_mult_rows/samples.jsonl',)),
    PoolTask('medication_dose', ('medication_dose/samples.jsonl',)),
    PoolTask('missing_operators', ('missing_operators/samples.jsonl',)),
    PoolTask('music_theory', ('music-theory/tetrads-samples.jsonl', 'music-theory/triads-samples.jsonl')),
    PoolTask('music_theory_scale_modes', ('music_theory_scale_modes/samples.jsonl',)),
    PoolTask('naughty_strings', ('naughty_strings/samples.jsonl',)),
    PoolTask('next_val_series', ('next-val-series/next-val-series.jsonl',)),
    PoolTask('number_pattern', ('number_pattern/samples.jsonl',)),
    PoolTask('nutrition', ('nutrition/facts.jsonl',)),
    PoolTask('pantone_to_hex', ('pantone_to_hex/samples.jsonl',)),
    PoolTask('pararule_plus_multi_step_deductive_reasoning', (
        'pararule-plus-multi-step-deductive-reasoning/pararule-plus-multi-step-deductive-reasoning.jsonl',
    )),
    PoolTask('partially_solved_crossword_clues', ('partially_solved_crossword_clues/samples.jsonl',)),
    PoolTask('pattern_identification', ('pattern_identification/samples.v0.jsonl',)),
    PoolTask('points_on_line', ('points_on_line/points_on_line.jsonl',)),
    PoolTask('poker_analysis', ('poker_analysis/samples.jsonl',)),
    PoolTask('poker_hand_ranks', ('poker_hand_ranks/full_samples.jsonl',)),
    PoolTask('positive_binary_operations', ('positive-binary-operations/samples.jsonl',)),
    PoolTask('probability_questions', ('probability_questions/probability_questions.jsonl',)),
    PoolTask('product_ie', (
        'product-ie/fewshot/product_ie_one_shot_samples.jsonl',
        'product-ie/zeroshot/product_ie_zero_shot_samples.jsonl',
    )),
    PoolTask('product_matching', ('product-matching/rules/samples.jsonl', 'product-matching/zeroshot/samples.jsonl')),
    PoolTask('proofreader', ('proofreader/samples.jsonl',)),
    PoolTask('ral_to_hex', ('ral_to_hex/samples.jsonl',)),
    PoolTask('recurrence_relation', ('recurrence-relation/samples.jsonl',)),
    PoolTask('resistor_ohm_calculator', ('resistor_ohm_calculator/samples.jsonl',)),
    PoolTask('rot13', ('rot13/rot13.jsonl',)),
    PoolTask('rubiks_colors', ('rubiks-colors/samples.jsonl',)),
    PoolTask('sexagenary_cycle_calculation', ('sexagenary_cycle_calculation/samples.jsonl',)),
    PoolTask('solve_for_variable', ('solve-for-variable/samples.jsonl',)),
    PoolTask('sort_numeric', ('sort_numeric/samples.jsonl',)),
    PoolTask('squares_gpt', ('squares-gpt/square-samples.jsonl',)),
    PoolTask('stock_options', (
        'stock_options/stock_option_terms_bear_call_spread.jsonl',
        'stock_options/stock_option_terms_bull_call_spread.jsonl',
        'stock_options/stock_option_terms_inverse_iron_condor_spread.jsonl',
        'stock_options/stock_option_terms_iron_butterfly_spread.jsonl',
        'stock_options/stock_option_terms_iron_condor_spread.jsonl',
        'stock_options/stock_options_bear_call_spread.jsonl',
        'stock_options/stock_options_bull_call_spread.jsonl',
        'stock_options/stock_options_inverse_iron_butterfly_spread.jsonl',
        'stock_options/stock_options_inverse_iron_condor_spread.jsonl',
        'stock_options/stock_options_iron_condor_spread.jsonl',
    )),
    PoolTask('swap_words', ('swap-words/samples.jsonl',)),
    PoolTask('syllables_long_words', ('syllables_long_words/long_word_samples.jsonl',)),
    PoolTask('taxes', ('taxes/samples.jsonl',)),
    PoolTask('tempo_to_measure_count', ('tempo_to_measure_count/samples.jsonl',)),
    PoolTask('test_comp_sci', ('test_comp_sci/questions.jsonl',)),
    PoolTask('three_pt_mapping', ('three-pt-mapping/three_pt_mapping.jsonl',)),
    PoolTask('unified_patch', ('unified_patch/samples.jsonl',)),
    PoolTask('unique_combinations', ('unique_combinations/samples.jsonl',)),
    PoolTask('us_tort_law', ('us_tort_law/samples.jsonl',)),
    PoolTask('utah_real_estate', ('utah_real_estate/samples.jsonl',)),
    PoolTask('vigenere', ('vigenere/samples.jsonl',)),
)

_MIRRORS = "its skill mirrors an evaluation task"
_LANGUAGE = "in or about another language"
EXCLUDED: dict[str, str] = {
    **{t.member.split("/")[0]: "held out for evaluation" for t in HELDOUT_TASKS},
    **{f: "licensed separately (the wheel's LICENSE.md)" for f in (
        "sandbagging", "theory_of_mind", "text_compression", "steganography", "schelling_point", "ballots",
        "already_said_that")},
    **{f: _MIRRORS for f in ("directions", "2d_movement", "relative_orientations", "european_date_format_challenge",
                             "date-calculator", "sarcasm", "corr2cause")},
    **{f: _LANGUAGE for f in (
        "afrikaans-lexicon", "brazilian-lexicon", "bulgarian-lexicon", "canto_wu_pronunciation", "dutch-lexicon",
        "dutch-rhymes", "french-lexicon", "french-part-of-speech", "german-part-of-speech", "greek_nt_manuscripts",
        "hebrew_rhyme", "hindi_shuddha", "hindi_words", "indonesian_numbers", "irish-lexicon", "italian-new-words",
        "italian_big_math_expression", "italian_rhyme", "kanji-idioms", "korean-consonant-vowel-combination",
        "korean_spelling", "norwegian-lexicon", "number_reading", "polish-lexicon", "polish_rhymes_generation",
        "portuguese-sarcasm", "pure_korean", "rare-and-loanwords-dutch-lexicon", "romanian-logic", "sindarin_fluency",
        "spanish-lexicon", "swedish-spelling", "urdu-lexicon", "blackfoot-numerals-modern", "belarusian_rhyme",
        "japanese_number_reading", "nepali_numerals", "portuguese-syllable-count", "russian-lexicon")},
    **{f: "a file over 50 MB" for f in ("diabetes", "formal_logic", "self_prompting")},
}


# --------------------------------------------------------------------------- records
_ROLE_OF_NAME = {"example_user": "user", "example_assistant": "assistant"}


def chat_turns(inp: Any, at: str) -> list[dict[str, str]]:
    """The registry's ``input`` (a string or a list of ``{role, content[, name]}``) as chat turns;
    few-shot turns (``name`` example_user / example_assistant) become user / assistant turns."""
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list) or not inp:
        raise DataError(f"{at}: 'input' is neither a string nor a list of chat turns.")
    turns = []
    for m in inp:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{at}: a chat turn is not {{role, content: str}}: {str(m)[:80]}")
        role = _ROLE_OF_NAME.get(m.get("name"), m.get("role"))
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{at}: unknown chat role {role!r}.")
        turns.append({"role": role, "content": m["content"]})
    return turns


def ideal_text(ideal: Any) -> str | None:
    """The registry's answer (``ideal``: a string, a number, or a list of accepted answers: the first)."""
    if isinstance(ideal, list):
        ideal = ideal[0] if ideal else None
    if isinstance(ideal, bool) or not isinstance(ideal, (str, int, float)):
        return None
    return str(ideal).strip() or None


def read_member(zf: zipfile.ZipFile, member: str, wheel: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs of one registry JSONL file."""
    path = REGISTRY + member
    try:
        text = zf.read(path).decode("utf-8")
    except KeyError:
        raise DataError(f"{wheel}: no member {path}; is this the evals 3.0.1.post1 wheel?") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{wheel}!{path}:{n}: malformed JSON ({e.msg}).") from None
    return out


def pool_example(task: str, k: int, rec: dict[str, Any], at: str) -> dict[str, Any] | None:
    """A pool example from one registry record (``None`` where it is unusable: no single answer,
    the last turn is not the question, too long, or it asks for shown work)."""
    answer = ideal_text(rec.get("ideal"))
    if answer is None:
        return None
    turns = chat_turns(rec.get("input"), at)
    if turns[-1]["role"] == "assistant" or not any(t["role"] == "user" for t in turns):
        return None
    text = chat_instruction(turns)
    if not text or len(text) + len(answer) > MAX_CHARS or ASKS_FOR_WORK.search(text):
        return None
    return {"id": f"{task}-{k:05d}", "instruction": text, "input": "", "response": answer,
            "category": task, "messages": [*turns, {"role": "assistant", "content": answer}]}


def is_english(texts: Iterable[str], threshold: float = 0.97) -> bool:
    """Whether at least ``threshold`` of the characters are ASCII (the lab's English-only rule)."""
    total = ascii_ = 0
    for t in texts:
        total += len(t)
        ascii_ += sum(c.isascii() for c in t)
    return total > 0 and ascii_ / total >= threshold


def seeded_pick(n: int, k: int, *key: Any) -> list[int]:
    """``k`` of ``range(n)`` in ascending order, drawn with the build's seed and ``key``."""
    order = list(range(n))
    _rng(*key).shuffle(order)
    return sorted(order[:k])


def task_pool(task: PoolTask, zf: zipfile.ZipFile, wheel: Path, cap: int = POOL_CAP) -> list[dict[str, Any]]:
    """At most ``cap`` usable, distinct examples of one task, drawn with ``random.Random("1234:general:<task>")``."""
    usable, seen = [], set()
    k = 0
    for member in task.members:
        for n, rec in read_member(zf, member, wheel):
            ex = pool_example(task.name, k, rec, f"{wheel}!{REGISTRY}{member}:{n}")
            k += 1
            if ex is None:
                continue
            key = normalise_text(ex["instruction"])
            if key in seen:
                continue
            seen.add(key)
            usable.append(ex)
    if not usable:
        raise DataError(f"{wheel}: task {task.name} ({', '.join(task.members)}) has no usable example.")
    return [usable[i] for i in seeded_pick(len(usable), cap, "general", task.name)]


# --------------------------------------------------------------------------- held-out items
_TRAILING_ANSWER = re.compile(r"\s*(your answer|answer)\s*:\s*$", re.I)
_OPTION = re.compile(r"^\s*([A-Ea-e])\s*[.:)]\s*(\S.*?)\s*$")


def split_options(text: str) -> tuple[str, list[str], str] | None:
    """``(stem, option texts, letters)`` of a question whose last lines are lettered options
    (``A. x`` / `` A: x`` / ``a) x``, consecutive letters from A); ``None`` if it has none."""
    lines = text.rstrip().split("\n")
    opts: list[tuple[str, str]] = []
    i = len(lines)
    while i > 0:
        m = _OPTION.match(lines[i - 1])
        if not m:
            break
        opts.insert(0, (m.group(1).upper(), m.group(2)))
        i -= 1
    letters = "".join(o[0] for o in opts)
    if len(opts) < 2 or letters != "ABCDE"[: len(opts)]:
        return None
    return "\n".join(lines[:i]).strip(), [o[1] for o in opts], letters


def heldout_item(task: HeldoutTask, k: int, rec: dict[str, Any], at: str) -> dict[str, Any] | None:
    """A closed-ended item in the lab's prompt format (``None`` where unusable)."""
    answer = ideal_text(rec.get("ideal"))
    turns = chat_turns(rec.get("input"), at)
    if answer is None or turns[-1]["role"] != "user":
        return None
    system = "\n\n".join(t["content"].strip() for t in turns if t["role"] == "system")
    question = _TRAILING_ANSWER.sub("", turns[-1]["content"]).strip()
    if task.labels is not None:  # the system turn states the task; labels the question lists go (Options: has them)
        choices = list(task.labels)
        if answer not in choices:
            return None
        gold = choices.index(answer)
        lines = question.split("\n")
        while len(lines) > 1 and lines[-1].strip() in choices:
            lines.pop()
        question = "\n".join(lines).strip()
    else:  # lettered options: the choices are their texts, so the system turn's "answer with the letter" goes
        parsed = split_options(question)
        if parsed is None:
            return None
        question, choices, letters = parsed
        letter = answer[:1].upper()
        if letter not in letters or len(set(choices)) != len(choices):
            return None
        gold = letters.index(letter)
        system = ""
    body = f"{system}\n\n{question}" if system else question
    if not question or len(body) > MAX_PROMPT_CHARS:
        return None
    return {"id": f"{task.name}-{k:05d}", "task": task.name, "category": task.name,
            "prompt": render_prompt(body, choices), "choices": choices, "answer": gold, "split": "test"}


def task_heldout(task: HeldoutTask, zf: zipfile.ZipFile, wheel: Path, n: int = N_HELDOUT) -> list[dict[str, Any]]:
    """``n`` distinct items of one held-out task, drawn with ``random.Random("1234:heldout:<task>")``."""
    usable, seen = [], set()
    for k, (line, rec) in enumerate(read_member(zf, task.member, wheel)):
        it = heldout_item(task, k, rec, f"{wheel}!{REGISTRY}{task.member}:{line}")
        if it is None or normalise_text(it["prompt"]) in seen:
            continue
        seen.add(normalise_text(it["prompt"]))
        usable.append(it)
    if len(usable) < n:
        raise DataError(f"{wheel}: held-out task {task.name} has {len(usable)} usable items, fewer than {n}.")
    return [usable[i] for i in seeded_pick(len(usable), n, "heldout", task.name)]


# --------------------------------------------------------------------------- checks
def prompt_body(prompt: str) -> str:
    """An evaluation prompt without its options and ``Answer:`` (the text a leak would copy)."""
    return normalise_text(prompt.split("\nOptions:\n")[0])


def leaks(pool: list[dict[str, Any]], items: Iterable[dict[str, Any]], min_chars: int = 40) -> list[str]:
    """Ids of evaluation items whose question (:func:`prompt_body`, at least ``min_chars`` long)
    appears inside a pool example's text."""
    hay = "\x00".join(normalise_text(ex["instruction"]) for ex in pool)
    return [it["id"] for it in items if len(b := prompt_body(it["prompt"])) >= min_chars and b in hay]


def folder(member: str) -> str:
    """The registry data folder of a member path (a task's identity: both sides never share one)."""
    return member.split("/")[0]


# --------------------------------------------------------------------------- build
def build_general(evals_wheel: Path, out: Path, other_suites: dict[str, list[dict[str, Any]]],
                  pool_tasks: tuple[PoolTask, ...] = POOL_TASKS,
                  heldout_tasks: tuple[HeldoutTask, ...] = HELDOUT_TASKS,
                  cap: int = POOL_CAP, n_heldout: int = N_HELDOUT) -> dict[str, Any]:
    """Write ``train.jsonl``, ``eval_heldout.jsonl`` and ``MANIFEST.json`` into ``out``; return the manifest.

    ``other_suites``: the items of every other evaluation suite (the lab's ``indist``, ``bbh``,
    ``mmlu``); the build fails if a pool task is one of their tasks or a pool example contains
    one of their questions.
    """
    names = [t.name for t in pool_tasks] + [t.name for t in heldout_tasks]
    if len(set(names)) != len(names):
        raise DataError(f"task names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}.")
    shared = {folder(m) for t in pool_tasks for m in t.members} & {folder(t.member) for t in heldout_tasks}
    if shared:
        raise DataError(f"data folders both in the pool and held out: {sorted(shared)}.")
    other = {it["task"] for items in other_suites.values() for it in items}
    clash = sorted(set(t.name for t in pool_tasks) & (other | {t.name for t in heldout_tasks}))
    if clash:
        raise DataError(f"pool tasks that are evaluation tasks: {clash}.")

    with zipfile.ZipFile(evals_wheel) as zf:
        heldout = [it for t in heldout_tasks for it in task_heldout(t, zf, evals_wheel, n_heldout)]
        pool, seen = [], set()
        for t in pool_tasks:
            for ex in task_pool(t, zf, evals_wheel, cap):
                key = normalise_text(ex["instruction"] + "\n" + ex["response"])
                if key not in seen:  # the same example in two tasks is kept once (the first task's)
                    seen.add(key)
                    pool.append(ex)
    for i, ex in enumerate(pool, start=1):
        check_instruction(ex, f"train.jsonl:{i}")
    for i, it in enumerate(heldout, start=1):
        check_mc_item(it, f"eval_heldout.jsonl:{i}")
    suites = {"heldout": heldout, **other_suites}
    leaked = {s: leaks(pool, items) for s, items in suites.items()}
    if any(leaked.values()):
        raise DataError(f"evaluation questions found in the general pool: "
                        f"{ {s: ids[:5] for s, ids in leaked.items() if ids} } (build bug: pick other tasks).")

    files = {"train.jsonl": [compact_chat(ex) for ex in pool], "eval_heldout.jsonl": heldout}
    manifest: dict[str, Any] = {
        "version": VERSION, "seed": SEED, "cap_per_task": cap, "heldout_per_task": n_heldout,
        "max_chars": MAX_CHARS, "max_prompt_chars": MAX_PROMPT_CHARS,
        "sources": {f"{EVALS[0]}=={EVALS[1]}": EVALS[2]}, "files": {}, "tasks": {}}
    out.mkdir(parents=True, exist_ok=True)
    write_files(out, files, manifest)
    pool_counts = manifest["files"]["train.jsonl"]["per_task"]
    held_counts = manifest["files"]["eval_heldout.jsonl"]["per_task"]
    for t in pool_tasks:
        manifest["tasks"][t.name] = {"role": "pool", "members": [REGISTRY + m for m in t.members],
                                     "licence": LICENCE, "n": pool_counts.get(t.name, 0)}
    for t in heldout_tasks:
        manifest["tasks"][t.name] = {"role": "heldout", "members": [REGISTRY + t.member],
                                     "licence": LICENCE, "n": held_counts.get(t.name, 0)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def provenance_table(manifest: dict[str, Any]) -> str:
    """The per-task provenance table of data/README.md (task, role, file in the wheel, licence,
    count), from a MANIFEST; a test checks that the README holds it verbatim."""
    rows = ["| task | role | file(s) in the evals wheel (under `evals/registry/data/`) | licence | count |",
            "|---|---|---|---|---|"]
    for name, t in sorted(manifest["tasks"].items(), key=lambda kv: (kv[1]["role"] != "heldout", kv[0])):
        files = ", ".join(f"`{m[len(REGISTRY):]}`" for m in t["members"])
        rows.append(f"| {name} | {t['role']} | {files} | {t['licence']} | {t['n']} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- choosing the pool
MATCH_CLASSES = ("evals.elsuite.basic.match:Match", "evals.elsuite.basic.includes:Includes",
                 "evals.elsuite.basic.fuzzy_match:FuzzyMatch")
MIN_USABLE = 40  # a pool task needs at least this many usable examples


def candidates(evals_wheel: Path) -> dict[str, dict[str, Any]]:
    """Registry data folders that qualify for the pool (see the rule above :data:`POOL_TASKS`),
    before :data:`EXCLUDED`: ``{folder: {"members": [...], "usable": n}}``. Reads every registry
    eval YAML and every sample file of an exact/inclusion/fuzzy-match eval (slow: minutes)."""
    files: dict[str, None] = {}
    with zipfile.ZipFile(evals_wheel) as zf:
        names = set(zf.namelist())
        for y in sorted(n for n in names if n.startswith("evals/registry/evals/") and n.endswith(".yaml")):
            try:
                spec = yaml.safe_load(zf.read(y))
            except yaml.YAMLError:
                continue
            for entry in (spec or {}).values() if isinstance(spec, dict) else ():
                if isinstance(entry, dict) and entry.get("class") in MATCH_CLASSES:
                    sj = (entry.get("args") or {}).get("samples_jsonl")
                    if isinstance(sj, str) and REGISTRY + sj in names:
                        files[sj] = None
        out: dict[str, dict[str, Any]] = {}
        for member in sorted(files):
            if zf.getinfo(REGISTRY + member).file_size > 50_000_000:
                continue
            try:
                rows = read_member(zf, member, evals_wheel)
            except DataError:
                continue
            usable = []
            for n, rec in rows:
                try:
                    ex = pool_example("x", n, rec, member)
                except DataError:
                    ex = None
                if ex is not None:
                    usable.append(ex["instruction"] + ex["response"])
            if usable and is_english(usable):
                entry = out.setdefault(folder(member), {"members": [], "usable": 0})
                entry["members"].append(member)
                entry["usable"] += len(usable)
    return {f: e for f, e in out.items() if e["usable"] >= MIN_USABLE}


def task_name(folder_name: str) -> str:
    """A pool task's name: its data folder in lower case, '-' as '_'."""
    return folder_name.lower().replace("-", "_")


if __name__ == "__main__":  # print the pool's task list from the evals wheel given
    import sys

    found = candidates(Path(sys.argv[1]))
    for f, e in sorted(found.items()):
        if f not in EXCLUDED:
            print(f"    PoolTask({task_name(f)!r}, {tuple(e['members'])!r}),  # {e['usable']} usable")
    print("# excluded:", sorted(f for f in found if f in EXCLUDED))
