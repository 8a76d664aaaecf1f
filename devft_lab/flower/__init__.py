"""DevFT on Flower: the same workloads as the in-process simulation, over Flower's transport.

* :mod:`devft_lab.flower.workload`     the federated job without transport (``Workload``)
* :mod:`devft_lab.flower.server_app`   ServerApp: a FedAvg subclass run by Flower's ``Strategy.start``
* :mod:`devft_lab.flower.client_app`   ClientApp: local update of the partition the server names
* :mod:`devft_lab.flower.records`      tensors <-> ArrayRecord/ConfigRecord (no pickle)
* :mod:`devft_lab.flower.simulate`     Flower Simulation Engine (Ray)
* :mod:`devft_lab.flower.deploy`       SuperLink + SuperNodes as real processes on loopback
* :mod:`devft_lab.flower.devft_workload` the ``devft`` workload: a ``devft-lab run`` config on Flower
* :mod:`devft_lab.flower.cli`          ``main(argv)`` behind ``devft-lab flower``
* :mod:`devft_lab.flower.tls`          throw-away TLS material for loopback tests

Needs ``pip install 'devft-lab[flower]'`` (flwr with its ``simulation`` extra).
"""
