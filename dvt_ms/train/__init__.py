"""Training of DVT cascades: ``dvt-train`` (see :mod:`dvt_ms.train.cli`) and its building blocks.

:mod:`~dvt_ms.train.options` (the flag table) is plain Python, cheap to import for other commands;
the other submodules hold one piece each (optimizer, schedule, loss,
EMA, loss scale, train step, checkpoints, distributed set-up, logs, validation, the epoch loop).
"""
