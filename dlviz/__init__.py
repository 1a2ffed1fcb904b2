"""dlviz: record real PyTorch DataLoader runs and see where every sample went.

    run = dlviz.record(loader)          # one pass, with a loop pattern of your choice
    traced = dlviz.trace(loader)        # or iterate it yourself: for batch in traced
    run.summary(); run.fate(i)          # the ledger
    dlviz.plot_run(run)                 # timeline + ledger + counts

The notebooks in ``notebooks/`` teach with it, lesson by lesson.
"""

from dlviz import datasets
from dlviz.ledger import FATES
from dlviz.run import Event, Run, merge_runs
from dlviz.trace import Traced, record, trace

__all__ = ["record", "trace", "Traced", "Run", "Event", "merge_runs", "datasets", "FATES"]
__version__ = "0.1.0"
