"""Run profiles for the notebooks: ``full`` (people, the real model) or ``ci`` (tests, seconds).

The profile is read from the environment variable ``DEVFT_PROFILE``:

=========  =================================================================
``full``   default. The embedded SmolLM2-135M-Instruct (30 layers), full
           text sets, fine sweeps. What the committed notebooks show.
``ci``     the random 8-layer ``tiny-llama`` and small text sets, so that a
           notebook runs in seconds. ``make test`` sets it for nbval
           (``notebooks/conftest.py``).
=========  =================================================================

A notebook asks for sizes with :func:`pick` (``pick(ci=2, full=8)``) and loads its model
with :func:`load_profile_model`. ``DEVFT_NOTEBOOK_MODEL`` overrides the model of either
profile (a preset name, hub id or folder), e.g. to run the full notebooks on Gemma 3.

Profiles change numbers, never the code path: every cell runs in both.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar

Profile = Literal["ci", "full"]
PROFILES: tuple[Profile, ...] = ("ci", "full")
ENV_VAR = "DEVFT_PROFILE"
MODEL_ENV_VAR = "DEVFT_NOTEBOOK_MODEL"
MODELS: dict[str, str] = {"ci": "tiny-llama", "full": "smollm2-135m"}

T = TypeVar("T")


def profile() -> Profile:
    """The active profile: ``DEVFT_PROFILE`` (``ci`` or ``full``), default ``full``."""
    value = os.environ.get(ENV_VAR, "full").strip().lower() or "full"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; use one of {PROFILES} "
                         f"(unset means 'full').")
    return value  # type: ignore[return-value]


def is_ci() -> bool:
    """True in the fast test profile."""
    return profile() == "ci"


def pick(ci: T, full: T) -> T:
    """The value for the active profile, e.g. ``n_texts = pick(ci=4, full=32)``."""
    return ci if is_ci() else full


def profile_model() -> str:
    """Model name of the active profile (``DEVFT_NOTEBOOK_MODEL`` wins when set)."""
    return os.environ.get(MODEL_ENV_VAR) or MODELS[profile()]


def quiet() -> None:
    """No progress bars and only errors from transformers (both profiles, so outputs stay clean)."""
    os.environ.setdefault("DEVFT_QUIET", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter of transformers/peft
    try:
        from transformers.utils import logging as hf_logging  # optional/heavy: transformers

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def load_profile_model(device: str = "cpu"):
    """``(model, tokenizer)`` of the active profile, fp32, eval mode, progress bars off."""
    from devft_lab.core.models import load_model  # optional/heavy: torch (devft_lab.core.models)

    quiet()
    return load_model(profile_model(), device=device)


def describe() -> str:
    """One line for the notebook's first output, e.g. ``profile=full model=smollm2-135m``."""
    return f"profile={profile()} model={profile_model()}"


def repo_root(start: Path | None = None) -> Path:
    """The repository's top folder, seen from a notebook (its folder is ``notebooks/``) or the top itself."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "devft_lab").is_dir():
            return p
    return here


def setup(ci: dict[str, Any] | None = None, full: dict[str, Any] | None = None) -> SimpleNamespace:
    """The one setup cell of a notebook: quiet output, the profile's sizes, the repository root.

    ``ci`` and ``full`` map the same names to the sizes of each profile; the result holds the
    active profile's values as attributes, plus ``root`` (the repository folder), ``profile``
    and ``model`` (the profile's model name). Teaching cells then read ``S.n_texts`` and never
    branch on the profile themselves::

        S = setup(ci=dict(n_texts=4), full=dict(n_texts=32))
    """
    ci, full = dict(ci or {}), dict(full or {})
    if set(ci) != set(full):
        raise ValueError(f"setup(): ci and full must name the same sizes; only in one of them: "
                         f"{sorted(set(ci) ^ set(full))}")
    quiet()
    values = ci if is_ci() else full
    return SimpleNamespace(root=repo_root(), profile=profile(), model=profile_model(), **values)
