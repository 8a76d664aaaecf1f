"""Build the lab benchmark under ``data/lab/`` from two pinned PyPI packages.

    python -m devft_lab.data.build            # download, extract, write data/lab/*.jsonl
    python -m devft_lab.data.build --check    # rebuild in a temp dir, compare with data/lab/
    python -m devft_lab.data.build --pool general [--check]   # data/general (devft_lab.data.general)

Sources (fetched with ``pip download --no-deps`` into a temporary folder, checked by sha256,
read as archives, never installed):

* ``bigbench==1.0.0`` sdist (Apache-2.0): BIG-bench's own JSON versions of the BBH tasks,
  read with :mod:`tarfile`.
* ``evals==3.0.1.post1`` wheel (MIT): ``evals/registry/data/sandbagging/samples-all.jsonl``,
  200 MMLU questions with a ``topic`` field, read with :mod:`zipfile`.

Outputs (see ``data/README.md``): ``train.jsonl`` (the fine-tuning pool: instruction examples
of the *training tasks*), ``eval_indist.jsonl`` (held-out examples of the training tasks),
``eval_bbh.jsonl`` (BBH tasks that are *not* in the pool), ``eval_mmlu.jsonl`` and
``MANIFEST.json`` (counts and sha256 of every file). The build is deterministic: examples
are grouped by their input text (one group never spans two splits), groups are shuffled
with a seed per task, choices are shuffled with a seed per item.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from devft_lab.data.files import sha256_file
from devft_lab.data.records import DataError, check_instruction, check_mc_item, normalise_text, write_jsonl
from devft_lab.data.lab import SUITE_FILES, data_dir, general_dir, read_items

BIGBENCH = ("bigbench", "1.0.0", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2")
EVALS = ("evals", "3.0.1.post1", "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78")
BB_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
MMLU_MEMBER = "evals/registry/data/sandbagging/samples-all.jsonl"

VERSION = 2  # of the lab data (MANIFEST "version"); data/README.md lists what each version changed
SEED = 1234  # every shuffle below derives its RNG from this seed and a task / item name
MAX_PROMPT_CHARS = 700  # longer prompts are dropped (CPU budget: ~200 tokens a sequence)
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data" / "lab"


ALL = None  # ``n_train=ALL``: every item left after the held-out ones goes to the pool


@dataclass(frozen=True)
class BBTask:
    """One BIG-bench task: where it lives in the sdist and what the lab does with it."""

    name: str  # task id in the lab files (also the pool's ``category``)
    member: str  # folder under bigbench/benchmark_tasks/
    role: str  # "train": pool + eval_indist; "ood": eval_bbh only
    n_test: int  # held-out items kept for evaluation
    n_train: int | None = 0  # pool examples (role "train"); ALL (None): every remaining item
    shuffle_choices: bool = True  # False where choices are labels that the input refers to


# BBH tasks present in bigbench 1.0.0 as multiple choice with short inputs. The pool holds
# the four tasks on which a LoRA fine-tune of SmolLM2-135M moved held-out accuracy
# (results/lab_signal.md on lab data version 1: date_understanding, disambiguation_qa, hyperbaton)
# plus logical_deduction_three_objects; navigate and sports_understanding (no gain or a loss)
# went to the unseen tasks. 105 held-out items per pool task: with 4 tasks the standard error
# of the macro-averaged accuracy is at most sqrt(4 * 0.25 / 105) / 4 = 2.44 points.
# Usable items (prompt <= MAX_PROMPT_CHARS): date_understanding 369, disambiguation_qa 258,
# logical_deduction_three_objects 300 (100 paragraphs x 3 questions), hyperbaton 50000.
TASKS: tuple[BBTask, ...] = (
    BBTask("date_understanding", "date_understanding", "train", 105, ALL),
    BBTask("disambiguation_qa", "disambiguation_qa", "train", 105, ALL),
    BBTask("hyperbaton", "hyperbaton", "train", 105, 300, shuffle_choices=False),
    BBTask("logical_deduction_three_objects", "logical_deduction/three_objects", "train", 105, ALL),
    BBTask("navigate", "navigate", "ood", 20, shuffle_choices=False),
    BBTask("sports_understanding", "sports_understanding", "ood", 20, shuffle_choices=False),
    BBTask("causal_judgment", "causal_judgment", "ood", 20, shuffle_choices=False),
    BBTask("snarks", "snarks", "ood", 20, shuffle_choices=False),
    BBTask("ruin_names", "ruin_names", "ood", 20),
    BBTask("movie_recommendation", "movie_recommendation", "ood", 20),
    BBTask("penguins_in_a_table", "penguins_in_a_table", "ood", 20),
    BBTask("tracking_shuffled_objects_three_objects", "tracking_shuffled_objects/three_objects", "ood", 20),
    BBTask("formal_fallacies", "formal_fallacies_syllogisms_negation", "ood", 20, shuffle_choices=False),
)
N_MMLU = 60  # MMLU questions kept (of those short enough), sampled with SEED


# --------------------------------------------------------------------------- sources


OLD_PIP = "pip==23.2.1"  # accepts bigbench's metadata; pip >= 24 refuses its direct-URL requirement


def _pip_download(pip: list[str], spec: str, kind: str, dest: Path) -> subprocess.CompletedProcess:
    cmd = [*pip, "download", "--no-deps", kind, spec, "-d", str(dest)]
    print(f"[build] pip download --no-deps {kind} {spec}", flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def download(dest: Path, packages: tuple[tuple[str, str, str], ...] = (BIGBENCH, EVALS)) -> tuple[Path, ...]:
    """``pip download --no-deps`` the pinned bigbench sdist and evals wheel (or ``packages`` of
    them); check sha256.

    Recent pip refuses the bigbench sdist ("Distributions from PyPI cannot declare direct
    URL dependencies", even with ``--no-deps``); then the download is repeated with
    :data:`OLD_PIP`, itself fetched with ``pip download`` and run from its wheel.
    """
    got = []
    pip = [sys.executable, "-m", "pip"]
    kinds = {BIGBENCH: "--no-binary=:all:", EVALS: "--only-binary=:all:"}
    for (name, version, digest), kind in ((p, kinds[p]) for p in packages):
        run = _pip_download(pip, f"{name}=={version}", kind, dest)
        if run.returncode != 0 and "direct URL" in run.stderr:
            tools = dest / "old-pip"
            _pip_download(pip, OLD_PIP, "--only-binary=:all:", tools)
            wheel = next(iter(sorted(tools.glob("pip-*.whl"))), None)
            if wheel is not None:
                run = _pip_download([sys.executable, str(wheel / "pip")], f"{name}=={version}", kind, dest)
        files = sorted(p for p in dest.iterdir() if p.name.lower().startswith(f"{name}-{version}"))
        if run.returncode != 0 or not files:
            raise DataError(f"pip download of {name}=={version} failed (needs access to PyPI):\n"
                            f"{run.stderr.strip()[-1500:]}")
        if sha256_file(files[0]) != digest:
            raise DataError(f"{files[0]}: sha256 differs from the pinned {digest}; the package on the "
                            "index changed. Update the pin in devft_lab/data/build.py only after checking it.")
        got.append(files[0])
    return tuple(got)


# --------------------------------------------------------------------------- items
def render_prompt(body: str, choices: list[str]) -> str:
    """The one prompt format of the lab: task text, the options, ``Answer:``."""
    options = "\n".join(f"- {c}" for c in choices)
    return f"{body.strip()}\nOptions:\n{options}\nAnswer:"


def _rng(*key: Any) -> random.Random:
    return random.Random(":".join(str(k) for k in (SEED, *key)))


def bigbench_items(task: BBTask, spec: dict[str, Any], at: str) -> list[dict[str, Any]]:
    """Closed-ended items of one BIG-bench task JSON (``spec``), in file order, with a ``group`` key."""
    prefix = (spec.get("task_prefix") or "").strip()
    in_prefix = spec.get("example_input_prefix") or ""
    items = []
    for k, ex in enumerate(spec.get("examples", [])):
        scores = ex.get("target_scores")
        if not scores:
            continue
        best = max(scores.values())
        if sum(v == best for v in scores.values()) != 1:
            continue  # no single right answer
        choices = [str(c).strip() for c in scores]
        gold = choices[list(scores.values()).index(best)]
        if task.shuffle_choices:
            _rng(task.name, k).shuffle(choices)
        body = f"{in_prefix.strip()} {ex['input'].strip()}".strip() if in_prefix.strip() else ex["input"].strip()
        body = f"{prefix}\n\n{body}" if prefix else body
        if len(body) > MAX_PROMPT_CHARS or len(set(choices)) != len(choices):
            continue
        items.append({"id": f"{task.name}-{k:05d}", "task": task.name, "category": task.name,
                      "prompt": render_prompt(body, choices), "choices": choices,
                      "answer": choices.index(gold), "group": normalise_text(ex["input"])})
    if not items:
        raise DataError(f"{at}: no usable multiple-choice examples.")
    return items


MMLU_RE = re.compile(r"\nA\. (.*)\nB\. (.*)\nC\. (.*)\nD\. (.*)\nAnswer:\s*$", re.S)


def mmlu_items(lines: Iterable[str], at: str) -> list[dict[str, Any]]:
    """MMLU items from the evals sandbagging JSONL (``question`` ending in A-D options, ``answer`` letter)."""
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        m = MMLU_RE.search(row["question"])
        if not m:
            raise DataError(f"{at}:{n}: question does not end in 'A. … D. …\\nAnswer:'.")
        stem, choices = row["question"][: m.start()].strip(), [c.strip() for c in m.groups()]
        if len(stem) > MAX_PROMPT_CHARS or len(set(choices)) != 4:
            continue
        topic = row.get("topic") or "unknown"
        items.append({"id": f"mmlu-{n:04d}", "task": "mmlu", "category": f"mmlu/{topic}",
                      "prompt": render_prompt(stem, choices), "choices": choices,
                      "answer": "ABCD".index(row["answer"].strip()), "group": normalise_text(stem)})
    return items


def split_groups(items: list[dict[str, Any]], n_test: int, n_train: int | None, key: str) -> tuple[list, list]:
    """(test, train): whole groups, shuffled with the task's seed; at most n_test / n_train items
    (``n_train=None``: every item not held out)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(it["group"], []).append(it)
    order = sorted(groups)
    _rng(key, "groups").shuffle(order)
    test, train = [], []
    for g in order:
        if len(test) < n_test:
            test.extend(groups[g])
        elif n_train is None or len(train) < n_train:
            train.extend(groups[g])
    return test[:n_test], train if n_train is None else train[:n_train]


def as_eval(item: dict[str, Any], split: str) -> dict[str, Any]:
    out = {k: v for k, v in item.items() if k != "group"}
    out["split"] = split
    return out


def as_instruction(item: dict[str, Any]) -> dict[str, Any]:
    """A pool example: the same prompt the evaluation shows, the answer text as the response."""
    return {"id": item["id"], "instruction": item["prompt"], "input": "",
            "response": item["choices"][item["answer"]], "category": item["category"]}


# --------------------------------------------------------------------------- build
def write_files(out: Path, files: dict[str, list[dict[str, Any]]], manifest: dict[str, Any]) -> None:
    """Write each ``name -> rows`` as JSONL under ``out`` and record its row count, sha256 and
    per-task counts in ``manifest["files"]``."""
    for name, rows in files.items():
        write_jsonl(out / name, rows)
        counts: dict[str, int] = {}
        for r in rows:
            key = r.get("task", r.get("category"))
            counts[key] = counts.get(key, 0) + 1
        manifest["files"][name] = {"n": len(rows), "sha256": sha256_file(out / name), "per_task": counts}


def build(bigbench_sdist: Path, evals_wheel: Path, out: Path = DEFAULT_OUT,
          tasks: tuple[BBTask, ...] = TASKS, n_mmlu: int = N_MMLU) -> dict[str, Any]:
    """Write the lab files into ``out`` from the two archives; return the manifest."""
    pool, indist, bbh = [], [], []
    with tarfile.open(bigbench_sdist) as tar:
        for task in tasks:
            member = f"{BB_ROOT}{task.member}/task.json"
            try:
                spec = json.load(tar.extractfile(member))
            except KeyError:
                raise DataError(f"{bigbench_sdist}: no member {member}; is this the bigbench 1.0.0 sdist?") from None
            items = bigbench_items(task, spec, f"{bigbench_sdist}!{member}")
            test, train = split_groups(items, task.n_test, task.n_train, task.name)
            if task.role == "train":
                indist += [as_eval(it, "test") for it in test]
                pool += [as_instruction(it) for it in train]
            else:
                bbh += [as_eval(it, "test") for it in test]
    with zipfile.ZipFile(evals_wheel) as zf:
        try:
            text = zf.read(MMLU_MEMBER).decode("utf-8")
        except KeyError:
            raise DataError(f"{evals_wheel}: no member {MMLU_MEMBER}; is this the evals wheel?") from None
    mmlu_all = mmlu_items(text.splitlines(), f"{evals_wheel}!{MMLU_MEMBER}")
    keep = sorted(_rng("mmlu").sample(range(len(mmlu_all)), min(n_mmlu, len(mmlu_all))))
    mmlu = [as_eval(mmlu_all[i], "test") for i in keep]

    files = {"train.jsonl": pool, "eval_indist.jsonl": indist, "eval_bbh.jsonl": bbh, "eval_mmlu.jsonl": mmlu}
    for name, rows in files.items():
        check = check_instruction if name == "train.jsonl" else check_mc_item
        for i, row in enumerate(rows, start=1):
            check(row, f"{name}:{i}")
    seen = {normalise_text(r["instruction"]) for r in pool}
    leaks = [r["id"] for name, rows in files.items() if name != "train.jsonl" for r in rows
             if normalise_text(r["prompt"]) in seen]
    if leaks:
        raise DataError(f"evaluation prompts also in the pool: {leaks[:5]} (build bug: splits must be disjoint).")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"version": VERSION, "seed": SEED, "max_prompt_chars": MAX_PROMPT_CHARS,
                                "sources": {f"{n}=={v}": d for n, v, d in (BIGBENCH, EVALS)}, "files": {}}
    write_files(out, files, manifest)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="devft-lab data build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default data/lab/)")
    ap.add_argument("--sources", type=Path, default=None,
                    help="folder that already holds the two pinned archives (skips pip download)")
    ap.add_argument("--check", action="store_true", help="rebuild in a temp folder and compare with --out")
    ap.add_argument("--pool", choices=("lab", "general"), default="lab",
                    help="lab: data/lab (default); general: data/general, the general instruction pool and the "
                         "held-out suite, from the evals wheel alone (devft_lab.data.general)")
    args = ap.parse_args(argv)
    if args.pool == "general":
        return main_general(args)
    with tempfile.TemporaryDirectory(prefix="devft-lab-data-") as tmp:
        tmp = Path(tmp)
        if args.sources:
            bb = next(iter(sorted(args.sources.glob("bigbench-1.0.0*"))), None)
            ev = next(iter(sorted(args.sources.glob("evals-3.0.1.post1*"))), None)
            if bb is None or ev is None:
                raise SystemExit(f"{args.sources}: needs bigbench-1.0.0.tar.gz and evals-3.0.1.post1-*.whl")
        else:
            bb, ev = download(tmp)
        target = tmp / "out" if args.check else args.out
        manifest = build(bb, ev, target)
        for name, info in manifest["files"].items():
            print(f"[build] {target / name}: {info['n']} rows  sha256 {info['sha256'][:16]}")
        if args.check:
            old = json.loads((args.out / "MANIFEST.json").read_text())
            same = {n: old["files"].get(n, {}).get("sha256") == i["sha256"] for n, i in manifest["files"].items()}
            print("[build] identical to", args.out, "" if all(same.values()) else f"NO: {same}")
            return 0 if all(same.values()) else 1
    return 0


def find_evals_wheel(sources: Path) -> Path:
    """The pinned evals wheel in ``sources`` (``--sources``)."""
    ev = next(iter(sorted(sources.glob("evals-3.0.1.post1*"))), None)
    if ev is None:
        raise SystemExit(f"{sources}: needs evals-3.0.1.post1-py3-none-any.whl "
                         "(pip download --no-deps evals==3.0.1.post1 -d DIR)")
    if sha256_file(ev) != EVALS[2]:
        raise SystemExit(f"{ev}: sha256 differs from the pinned {EVALS[2]}; download it again.")
    return ev


def main_general(args: argparse.Namespace) -> int:
    """``--pool general``: build (or ``--check``) data/general from the evals wheel."""
    from devft_lab.data.general import build_general  # optional/heavy: no, but data.general imports this module (a cycle)

    out = general_dir() if args.out == DEFAULT_OUT else args.out
    other = {name: read_items(data_dir() / f) for name, f in SUITE_FILES.items()}  # the lab's committed suites
    with tempfile.TemporaryDirectory(prefix="devft-lab-general-") as tmp:
        tmp = Path(tmp)
        ev = find_evals_wheel(args.sources) if args.sources else download(tmp, (EVALS,))[0]
        target = tmp / "out" if args.check else out
        manifest = build_general(ev, target, other)
        for name, info in manifest["files"].items():
            print(f"[build] {target / name}: {info['n']} rows  sha256 {info['sha256'][:16]}")
        if args.check:
            old = json.loads((out / "MANIFEST.json").read_text())
            same = {n: old["files"].get(n, {}).get("sha256") == i["sha256"] for n, i in manifest["files"].items()}
            print("[build] identical to", out, "" if all(same.values()) else f"NO: {same}")
            return 0 if all(same.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
