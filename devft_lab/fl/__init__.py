"""Federated runtime: strategies, client sampling, communication/compute accounting, checkpoints.

Pure functions over plain tensors and dataclasses, so that the in-process simulation and a
Flower app run the very same code:

* :mod:`devft_lab.fl.strategies`  FedIT, FFA-LoRA, FedSA-LoRA, FLoRA, FedProx (``get_strategy``);
  DoFIT in :mod:`devft_lab.fl.dofit`, C2A in :mod:`devft_lab.fl.c2a`
* :mod:`devft_lab.fl.sampling`    seeded client sampling per round (``sample_clients``)
* :mod:`devft_lab.fl.accounting`  bytes up/down, FLOPs, time and memory (``Ledger``, ``RoundCost``)
* :mod:`devft_lab.fl.checkpoint`  atomic save/load of the whole run state (``save_checkpoint``)
"""
