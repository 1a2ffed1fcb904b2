"""Each lesson's Check cells guard torch, not dlviz's idea of torch.

Every case runs one lesson in smoke mode (default start method) with one deliberate
change of torch's DataLoader behaviour, made inside the kernel by the test-only
``tests/lessons_can_fail/sitecustomize.py`` (``DLVIZ_MUTATION`` names the change), and
asserts that the lesson fails with an ``AssertionError`` in the Check cell that guards
the claim the change breaks: not in another cell, not with another error.
"""

from __future__ import annotations

import os
from pathlib import Path

import papermill
import pytest
from jupyter_client.kernelspec import find_kernel_specs

ROOT = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = Path(__file__).resolve().parent / "lessons_can_fail"
KERNEL = "dlviz" if "dlviz" in find_kernel_specs() else "python3"

# (lesson, change of torch's behaviour, first line of the Check cell that must fail)
CASES = [
    ("00_start_here", "round_robin_reversed",
     "# Check: round robin: batch k went to worker k % 2"),
    ("01_prefetch_myth", "empty_buffer_ends_epoch",
     "# Check: plain torch and the recording both got all 1000 samples"),
    ("02_batch_size_drop_last", "batch_sampler_ignores_drop_last",
     "# Check: plain torch and the recording agree: 997 - 997 % 32 delivered"),
    ("03_exceptions_crashes_hangs", "prefetch_one",
     "# Check: the batches lost are the ones the dead worker held"),
    ("04_state_in_workers", "numpy_seed_shared",
     "# Check: with a Generator on the dataset the workers repeat each other's draws"),
    ("05_iterable_datasets", "stream_ignores_drop_last",
     "# Check: each worker drops its own partial batch"),
    ("06_samplers_distributed", "distributed_pads_from_the_end",
     "# Check: rank r gets r, r+W, r+2W, ... of the index list padded with its own first"),
    ("07_audit_your_loader", "prefetch_one",
     "# Check: prefetch_factor x num_workers batches stay in flight"),
    ("08_throughput", "persistent_workers_ignored",
     "# Check: every setting delivered all N; in each second epoch no worker started"),
    ("09_epochs_checkpoints_resume", "set_epoch_ignored",
     "# Check: without set_epoch every epoch repeats epoch 0's order; set_epoch(e) draws"),
    ("09_epochs_checkpoints_resume", "stateful_resume_restarts",
     "# Check: the state_dict resume delivers each index exactly once across the two passes"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("lesson", "mutation", "check"), CASES,
                         ids=[f"{lesson[:2]}-{mutation}" for lesson, mutation, _ in CASES])
def test_lesson_fails_in_its_check(lesson: str, mutation: str, check: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "notebooks" / f"{lesson}.ipynb"
    monkeypatch.setenv("DLVIZ_MUTATION", mutation)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(SITECUSTOMIZE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(
            str(path), str(tmp_path / path.name), parameters={"smoke": True, "start_method": None},
            kernel_name=KERNEL, cwd=str(path.parent), progress_bar=False,
            request_save_on_cell_execute=False, execution_timeout=600,
        )
    error = failed.value
    first_line = error.source.lstrip().splitlines()[0]
    assert first_line.startswith(check), f"failed in another cell: {first_line!r}"
    assert error.ename == "AssertionError", f"{error.ename}: {error.evalue}"


def test_every_lesson_has_a_case() -> None:
    lessons = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert {lesson for lesson, _, _ in CASES} == lessons
