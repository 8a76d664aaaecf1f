"""devft_lab: teach and reproduce DevFT (Developmental Federated Tuning, arXiv 2508.00041).

Floors (imports only point down):

* surface       ``devft_lab.cli``, ``devft_lab.experiments``, ``devft_lab.teach``, notebooks
* assembly      ``devft_lab.runner`` (config, run, report), ``devft_lab.plans`` (devft, progfed)
* federated     ``devft_lab.fl``      clients, strategies, accounting, checkpoints, stages
* method math   ``devft_lab.method``  schedule, similarity, grouping (DGLG), fusion (DBLF),
                                      submodel, transfer — knows nothing of federation
* foundations   ``devft_lab.core`` (models, layers, lora, train, evaluate, ...), ``devft_lab.data``

Start with ``from devft_lab.core.models import load_model``.
"""
import os as _os

# OpenMP threads that spin while waiting make small models many times slower when another process
# shares the cores (docs/performance.md#measurements-behind-the-code). Passive waiting costs nothing
# measurable when the machine is idle. Set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
