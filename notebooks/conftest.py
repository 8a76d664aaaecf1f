"""Every notebook in this folder is an nbval test (``make test`` collects them).

- the kernels run the fast profile: ``DEVFT_PROFILE=ci`` (tiny model, seconds), unless the
  caller set ``DEVFT_PROFILE`` (``DEVFT_PROFILE=full pytest notebooks`` checks the real run);
- nbval is switched on for this folder (``--nbval``: compare every cell not tagged
  ``nbval-ignore-output``), with the kernel of this Python (``--nbval-current-env``) and the
  sanitize file next to this conftest.

The kernel inherits this process's environment, so setting variables here is enough.
See notebooks/README.md for which cells are compared and why.
"""
import os
from pathlib import Path

os.environ.setdefault("DEVFT_PROFILE", "ci")
for key, value in {"DEVFT_QUIET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
                   "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                   "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
    os.environ.setdefault(key, value)

SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")


def pytest_configure(config):
    opt = config.option
    if not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)):
        opt.nbval = True
    if not getattr(opt, "nbval_kernel_name", None):
        opt.nbval_current_env = True
    if not getattr(opt, "nbval_sanitize_with", None):
        opt.nbval_sanitize_with = str(SANITIZE)
