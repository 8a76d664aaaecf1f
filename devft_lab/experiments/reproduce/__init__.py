"""Reproduce the paper's tables: ``devft-lab reproduce TABLE --scale smoke|lab|paper``.

A table is a list of *variants* (a method or an ablation setting, i.e. config overrides)
run over seeds; one variant x one seed is a *cell*, one run folder::

    <runs>/<scale>[-<tag>]/<home table>/<variant>-s<seed>/     (a devft_lab.runner.run folder)

A variant that several tables share (DevFT in main, ablation and growth) has one home, so
it is trained once. Re-running the command skips finished cells (``summary.json`` with
``done``), resumes killed ones (``devft_lab.runner.run.resume``) and, with ``--max-cells K``,
trains at most K new cells per sitting. Afterwards it writes ``table_<name>.json`` and
``table_<name>.md`` from whatever cells are finished: mean +- sample std over seeds, the
paper's published values beside them, the command, config hashes, machine, and a status
``partial: k of n cells`` until all are done, and per compared pair a verdict read from its
95% interval (above, within or below zero). The reading in words is written by a person in
``RESULTS/readings/table_<name>.md``; the table links to it and never rewrites it.

Scales: ``smoke`` = the ``tiny`` config cut to 4 rounds (tests, seconds per cell),
``lab`` = ``smollm2_lab`` (SmolLM2-135M, lab benchmark, ~15-30 min per cell on a CPU),
``paper`` = ``llama2_7b`` (GPU + network; ``--base llama31_8b`` or ``llama2_13b`` for the
other columns).

Choices made here (the paper leaves them open):

* Growth x4 and x8 keep the total rounds and end at the full model; x4 uses 3 stages and
  x8 2 stages (so the first stage is ~L/16 and ~L/8 layers; with 4 stages x8 would start
  below one layer). Rounds are split evenly (``devft.rounds_per_stage=null``).
* Efficiency target = FedIT's final value of the headline metric *in the same seed*; a
  run reaches it at its first evaluation at or beyond it (no interpolation). Time is
  train + aggregate wall seconds (evaluation excluded), bytes are cumulative at that eval.

Modules: :mod:`.cells` (plan, variants, cells, running one), :mod:`.stats` (aggregation,
efficiency), :mod:`.tables` (build and write a table, its verdicts), :mod:`.cli`
(``devft-lab reproduce``). Everything public is re-exported here.
"""
from devft_lab.experiments.reproduce.cells import *  # noqa: F401,F403
from devft_lab.experiments.reproduce.cli import *  # noqa: F401,F403
from devft_lab.experiments.reproduce.stats import *  # noqa: F401,F403
from devft_lab.experiments.reproduce.tables import *  # noqa: F401,F403
