"""The documentation stays in step with the code.

- the README shows the two commands every user starts with;
- ``docs/configuration.md`` names every config key of :class:`devft_lab.runner.config.RunConfig`;
- every link to a glossary term (``glossary.md#term``) in the README, ``docs/`` and the
  notebooks lands on a ``## Term`` heading of ``docs/glossary.md``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from devft_lab.runner.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def config_keys() -> list[str]:
    """Every dotted key of a run config: ``name``, ``model.name``, ..., ``eval.holdout``."""
    keys = []
    cfg = RunConfig()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text


def test_configuration_reference_names_every_config_key():
    text = (DOCS / "configuration.md").read_text()
    missing = [k for k in config_keys() if f"`{k}`" not in text]
    assert not missing, f"docs/configuration.md does not document {missing}; add a row per key"


def test_glossary_links_land_on_a_term():
    glossary = (DOCS / "glossary.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^## (.+)$", glossary, re.M)}
    assert {"dglg", "dblf", "anchor", "capacity", "stage", "transfer", "flop-matched", "paired-ci",
            "answer_nll"} <= anchors
    sources = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "notebooks").glob("*.ipynb")]
    broken = sorted({f"{p.name}: #{a}" for p in sources
                     for a in re.findall(r"glossary\.md#([\w\-]+)", p.read_text()) if a not in anchors})
    assert not broken, f"links to glossary terms that docs/glossary.md has no '## Term' for: {broken}"
