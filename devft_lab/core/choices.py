"""Choosing by name: the error a wrong choice raises and the "did you mean" hint.

The lowest floor of the package (no devft_lab imports), so that every registry
(``fl.strategies``, ``method.grouping``, ``method.fusion``, ``plans``) and the run
configuration (``runner.config``) raise the same error with the same hint.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A configuration is invalid; the message names the field and how to fix it."""


def closest(name: str, valid: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest valid name (difflib ratio >= 0.5), else ``""``."""
    m = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" Did you mean {m[0]!r}?" if m else ""


def not_one_of(where: str, value: object, valid: Iterable[str]) -> ConfigError:
    """The error for a name that is not a choice: the field, the value given, every choice and the closest."""
    valid = [str(v) for v in valid]
    return ConfigError(f"{where} = {value!r} is not one of {', '.join(valid)}.{closest(str(value), valid)} "
                       f"Set {where} to one of them.")
