"""Run a snippet in a fresh Python where ``import torch`` fails (plots must not need it)."""

from __future__ import annotations

import subprocess
import sys

_BLOCK_TORCH = """
import importlib.abc, io, sys, types
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
import matplotlib
matplotlib.use("Agg")
"""

_CHECK = """
assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
print("ok")
"""


def run_without_torch(body: str) -> None:
    """Run ``body`` (``io``, ``sys``, ``types`` and Agg matplotlib are ready) and assert
    it succeeded and imported no part of torch."""
    done = subprocess.run([sys.executable, "-c", _BLOCK_TORCH + body + _CHECK],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
