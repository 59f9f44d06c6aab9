"""Ramanujan-graph analysis of pruning at initialization: the workbook's library.

Data flows one way: :mod:`lib.models` → :mod:`lib.pruning` (masks) → :mod:`lib.spectral`
(graph metrics) and :mod:`lib.train` (accuracies) → :mod:`lib.results` (tidy tables) →
:mod:`lib.plots` (figures). :mod:`lib.workbook` runs the grid; :mod:`lib.settings` and
:mod:`lib.paths` say what a run is and where it lives.
"""
