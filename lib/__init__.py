"""Ramanujan-graph analysis of pruning at initialization: the workbook's library.

Data flows one way: :mod:`lib.models` → :mod:`lib.pruning` (masks) → :mod:`lib.spectral`
(graph metrics) and :mod:`lib.train` (accuracies) → :mod:`lib.workbook` (units and tidy
tables) → :mod:`lib.claims` (statistics) and :mod:`lib.plots` (figures).
:mod:`lib.settings` says what a grid and a run are, :mod:`lib.store` where their files live
(written through :mod:`lib.files`), :mod:`lib.scaleout` runs a grid (in process, local
processes, SLURM) and :mod:`lib.cli` is its command line, ``python -m lib``.
"""
