"""dlviz: record real PyTorch DataLoader runs and see where every sample went.

    run = dlviz.record(loader)          # one pass, with a loop pattern of your choice
    traced = dlviz.trace(loader)        # or iterate it yourself: for batch in traced
    run.summary(); run.fate(i)          # the ledger
    dlviz.plot_run(run)                 # timeline + ledger + counts
    dlviz.explore(num_workers=2)        # sliders that re-run a real DataLoader
    dlviz.explain(run)                  # why samples are missing or repeated, by cause

The notebooks in ``notebooks/`` teach with it, lesson by lesson.
"""

from __future__ import annotations

import importlib
from typing import Any

# explain is loaded now, not lazily: it needs only numpy, and its module shares the
# function's name. Imported lazily, the first `import dlviz.explain` (plot_waterfall
# does one) would bind the *module* to dlviz.explain; imported here, the function wins.
from dlviz.explain import Finding, explain
from dlviz.ledger import FATE_COLORS, FATES
from dlviz.run import Event, Run, merge_runs

# The rest loads on first use: a saved Run can be read and drawn without torch, and
# DataLoader workers (which import dlviz for its datasets) skip matplotlib and ipywidgets.
_LAZY = {"record": "dlviz.recorder", "trace": "dlviz.recorder", "Traced": "dlviz.recorder",
         "plot_timeline": "dlviz.plot", "plot_ledger": "dlviz.plot", "plot_run": "dlviz.plot",
         "plot_pipeline": "dlviz.plot", "plot_passes": "dlviz.plot",
         "explore": "dlviz.explorer", "Explorer": "dlviz.explorer",
         "record_ranks": "dlviz.distributed",
         "plot_waterfall": "dlviz.plot"}

__all__ = ["Run", "Event", "merge_runs", "explain", "Finding", "datasets", "FATES",
           "FATE_COLORS", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "datasets":
        return importlib.import_module("dlviz.datasets")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dlviz' has no attribute {name!r}")
