"""The notebooks as a course: current outputs, no machine paths, and the parts every lesson has.

Properties of the committed notebooks (no kernel is started here):

- **current**: each notebook names the files its outputs are made from
  (``metadata.devft_lab.inputs``) and the hashes recorded by its last full-profile run still
  match them (``python -m devft_lab.teach.notebooks stale notebooks/*.ipynb`` says which to
  re-run);
- **portable**: no cell source or output carries a path of the machine it ran on, and no
  link leaves the repository (``../shared``, an absolute file path);
- **a lesson**: an opening that says what you will learn, what it assumes and how long it
  takes; at least two "Predict, then run" prompts; two to four exercises; takeaways; a
  link to the glossary;
- **exercises with solutions**: ``notebooks/solutions/nbNN.py`` holds one ``exercise_K()``
  per exercise of notebook NN; each runs here in the fast profile and asserts what it finds.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from devft_lab.teach.notebooks import stale_inputs

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "notebooks" / "solutions"


def _committed() -> list[Path]:
    paths = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
    try:
        tracked = set(subprocess.run(["git", "ls-files", "notebooks"], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout.split())
        paths = [p for p in paths if str(p.relative_to(ROOT)) in tracked]
    except (OSError, subprocess.CalledProcessError):
        pass
    return paths


NOTEBOOKS = _committed()
IDS = [p.stem[:2] for p in NOTEBOOKS]


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _markdown(nb: dict) -> str:
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def _outputs_text(nb: dict) -> str:
    parts = []
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        parts.append("".join(c["source"]))
        for o in c.get("outputs", []):
            parts.append("".join(o.get("text", "")))
            for mime, v in o.get("data", {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    parts.append(v if isinstance(v, str) else json.dumps(v))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_are_current(path):
    reasons = stale_inputs(_nb(path)["metadata"], ROOT)
    assert not reasons, (f"{path.name}: the committed outputs are stale ({'; '.join(reasons)}). Re-run it: "
                         f"python -m devft_lab.teach.notebooks run notebooks/{path.name}")


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users|private|mnt|opt|var)/[\w.-]")
OUTSIDE_LINK = re.compile(r"\]\((?:\.\./){2,}|\]\(\.\./shared|\]\(/|\]\(file:|\.\./shared/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_machine_paths_or_links_outside_the_repository(path):
    nb = _nb(path)
    text = _markdown(nb) + "\n" + _outputs_text(nb)
    assert not MACHINE_PATH.search(text), f"{path.name}: a machine path: {MACHINE_PATH.search(text).group(0)!r}..."
    assert not OUTSIDE_LINK.search(text), f"{path.name}: a link leaves the repository: {OUTSIDE_LINK.search(text).group(0)!r}"
    for target in re.findall(r"\]\((\.\./[^)#\s]+)", _markdown(nb)):
        assert (path.parent / target).exists(), f"{path.name}: the link {target} points to nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_notebook_is_a_lesson(path):
    md = _markdown(_nb(path))
    opening = "".join(_nb(path)["cells"][0]["source"])
    for part in ("What you will learn", "What it assumes", "Time"):
        assert part in opening, f"{path.name}: the first cell must say '{part}'"
    assert md.count("Predict, then run") >= 2, f"{path.name}: needs at least two 'Predict, then run' prompts"
    n = len(re.findall(r"^### Exercise \d+", md, flags=re.M))
    assert 2 <= n <= 4, f"{path.name}: {n} exercises ('### Exercise K' headings); a lesson has two to four"
    assert "## Takeaways" in md, f"{path.name}: ends with a '## Takeaways' section"
    assert "../docs/glossary.md" in md, f"{path.name}: links the glossary (../docs/glossary.md)"


def _solutions(nb_id: str):
    path = SOLUTIONS / f"nb{nb_id}.py"
    spec = importlib.util.spec_from_file_location(f"devft_solutions_nb{nb_id}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_each_exercise_has_a_solution(path):
    nb_id = path.stem[:2]
    assert (SOLUTIONS / f"nb{nb_id}.py").is_file(), f"notebooks/solutions/nb{nb_id}.py is missing"
    n = len(re.findall(r"^### Exercise \d+", _markdown(_nb(path)), flags=re.M))
    funcs = sorted(k for k in vars(_solutions(nb_id)) if re.fullmatch(r"exercise_\d+", k))
    assert funcs == [f"exercise_{k}" for k in range(1, n + 1)], \
        f"nb{nb_id}.py defines {funcs}; notebook {path.name} has {n} exercises"


def _all_solutions():
    out = []
    for p in sorted(SOLUTIONS.glob("nb[0-9][0-9].py")):
        src = p.read_text(encoding="utf-8")
        out += [(p.stem[2:], f) for f in re.findall(r"^def (exercise_\d+)\(", src, flags=re.M)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nb_id,func", _all_solutions(), ids=[f"nb{a}-{b}" for a, b in _all_solutions()])
def test_solution_runs_and_checks_its_answer(nb_id, func, monkeypatch):
    """Each solution runs in the fast profile (tiny models) and asserts the property it finds."""
    monkeypatch.setenv("DEVFT_PROFILE", "ci")
    monkeypatch.setenv("DEVFT_QUIET", "1")
    monkeypatch.chdir(ROOT / "notebooks")
    getattr(_solutions(nb_id), func)()
