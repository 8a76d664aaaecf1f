"""Stage plans over the federated runtime: DevFT (fused-layer stages) and ProgFed (a growing prefix).

``devft.py`` is Algorithm 1 step by step; ``hooks.py`` what watches its stages (the stage loss probe).

``PLANS`` is the registry ``devft.plan`` is checked against (:mod:`devft_lab.runner.config`).
"""
from devft_lab.plans.devft import DevFTPlan
from devft_lab.plans.progfed import ProgFedPlan

PLANS = {"devft": DevFTPlan, "progfed": ProgFedPlan}
