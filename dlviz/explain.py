"""Why is my epoch short (or long)? :func:`explain` names the causes in a recording.

The ledger (:mod:`dlviz.ledger`) gives every index one fate. This module reads
those fates, with what else the Run kept (the errors, which worker each batch went
to, the loader's and sampler's settings, how the pass stopped, its ranks), and
turns them into a list of :class:`Finding`: one per cause, each with a count, a
few example indices, one sentence, a fix, and the lesson that teaches it::

    for finding in dlviz.explain(run):
        print(finding)

The counts add up. Findings of ``kind="missing"`` count indices the loop never got,
and together they are exactly ``dataset_size - delivered``; findings of
``kind="extra"`` count deliveries beyond the first (repeats); ``kind="order"``
counts passes. A count that no recorded cause explains is reported as cause
``unexplained``, never folded into another. Nothing is guessed from outside the
Run, so a Run loaded from JSON gives the same findings, without torch.

Where a pass stopped early and its sampler also leaves indices out by design
(replacement, another rank's share), the recording cannot tell which of the
never-sampled indices the early stop cost: the split is made by counts where the
sampler's settings give them (``num_samples``, DistributedSampler's shares) and
those findings carry no examples; otherwise all of them are put on the early stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlviz.ledger import NEVER, RANK
from dlviz.run import Run

__all__ = ["Finding", "explain", "CAUSES", "CAUSE_FATE"]

LESSONS = {
    "02": "lesson 2 (02_batch_size_drop_last)",
    "03": "lesson 3 (03_exceptions_crashes_hangs)",
    "05": "lesson 5 (05_iterable_datasets)",
    "06": "lesson 6 (06_samplers_distributed)",
    "07": "lesson 7 (07_audit_your_loader)",
    "09": "lesson 9 (09_epochs_checkpoints_resume)",
}

# cause -> (the fate its indices have, the fix, the lesson that teaches it)
CAUSES: dict[str, tuple[str, str, str]] = {
    "drop_last": ("dropped", "drop_last=False, or a batch_size that divides the number of "
                  "samples", LESSONS["02"]),
    "iterable_drop_last_per_worker": (
        "dropped", "drop_last=False, or shards whose sizes are multiples of batch_size",
        LESSONS["05"]),
    "iterable_not_sharded": (
        "duplicated", "shard inside __iter__ with torch.utils.data.get_worker_info(): "
        "worker info.id takes every info.num_workers-th sample", LESSONS["05"]),
    "iterable_floor_sharding": (
        "never_sampled", "shard by stride (keys[info.id::info.num_workers]) or with ceiling "
        "division, so the shards cover every sample", LESSONS["05"]),
    "sampling_with_replacement": (
        "never_sampled", "replacement=False (WeightedRandomSampler too), if every sample "
        "should be seen once per epoch", LESSONS["06"]),
    "num_samples": ("never_sampled", "leave num_samples unset (it defaults to len(dataset))",
                    LESSONS["06"]),
    "distributed_padding": (
        "duplicated", "DistributedSampler(drop_last=True) trims instead of padding; for "
        "evaluation, count each index once", LESSONS["06"]),
    "distributed_trim": (
        "never_sampled", "DistributedSampler(drop_last=False) pads instead, or make the "
        "dataset size a multiple of world_size", LESSONS["06"]),
    "other_ranks_share": (
        "never_sampled", "nothing is lost: merge every rank's Run (dlviz.merge_runs) to see "
        "the whole epoch", LESSONS["06"]),
    "sampler_subset": (
        "never_sampled", "nothing, if the sampler leaves them out on purpose (a validation "
        "split); otherwise check the indices you give the sampler", LESSONS["07"]),
    "loop_stopped_early": (
        "in_flight", "let the pass run to its end, or stop on purpose and know what is left "
        "(with zip, cycle the shorter loader)", LESSONS["07"]),
    "worker_error": (
        "failed", "handle the bad sample inside __getitem__ (return None and collate with "
        "dlviz.datasets.collate_skip_none), so one sample does not cost a whole batch",
        LESSONS["03"]),
    "worker_died": (
        "failed", "find what killed the worker (the OOM killer: fewer workers, a smaller "
        "prefetch_factor, less memory per sample)", LESSONS["03"]),
    "timeout": ("failed", "find the sample that hangs (a network read, a lock); raise timeout "
                "only if that slowness is expected", LESSONS["03"]),
    "filtered_none": ("filtered", "repair or remove the bad samples at the source, and count "
                      "the ones your collate_fn skips", LESSONS["03"]),
    "set_epoch_missing": ("delivered", "call sampler.set_epoch(epoch) at the start of every "
                          "epoch", LESSONS["06"]),
    "resume_repeat": ("duplicated", "resume with torchdata's StatefulDataLoader "
                      "(state_dict() / load_state_dict()), which restores the sampler's "
                      "position", LESSONS["09"]),
    "resume_skip": ("never_sampled", "resume with torchdata's StatefulDataLoader "
                    "(state_dict() / load_state_dict()); prefetched batches are not lost then",
                    LESSONS["09"]),
    "unexplained": ("never_sampled", "look at run.fates() and dlviz.plot_run(run); please "
                    "report it to dlviz", LESSONS["07"]),
}
CAUSE_FATE = {cause: fate for cause, (fate, _, _) in CAUSES.items()}
"""The fate (or ``duplicated``) whose colour a cause wears in :func:`dlviz.plot_waterfall`."""
EXAMPLES = 5


@dataclass(frozen=True)
class Finding:
    """One cause of missing (or repeated) samples, with how many it explains.

    ``kind`` says what ``count`` counts: ``"missing"`` indices the loop never got,
    ``"extra"`` deliveries beyond an index's first, ``"order"`` passes.
    ``passes`` names the passes (positions in the list given to :func:`explain`)
    the finding is about; empty for a single Run.
    """

    cause: str
    count: int
    examples: tuple[int, ...]
    message: str
    fix: str
    lesson: str
    kind: str = "missing"
    passes: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"[{self.cause}] {self.message}\n    fix: {self.fix}\n    see: {self.lesson}"


def explain(run_or_runs: Run | Sequence[Run]) -> list[Finding]:
    """The causes of every missing and repeated sample in a recording (lesson 7).

    ``run_or_runs``: one :class:`dlviz.Run` (a pass; or merged ranks), or a list of
    Runs that are successive passes of one job. In a list, a pass that stopped early
    (``stop`` is not ``"exhausted"``) followed by another is read as a checkpoint and
    its resume: the two make one epoch (causes ``resume_repeat``, ``resume_skip``);
    every other pass is an epoch of its own, and passes of a shuffling
    DistributedSampler that repeat the order before them give ``set_epoch_missing``.
    """
    runs = _as_runs(run_or_runs)
    if isinstance(run_or_runs, Run):
        return _one(runs[0], np.ones(runs[0].dataset_size, bool), ())
    findings: list[Finding] = []
    k = 0
    while k < len(runs):
        run = runs[k]
        if run.stop != "exhausted" and k + 1 < len(runs):
            findings += _resumed(run, runs[k + 1], (k, k + 1))
            k += 2
            continue
        findings += _one(run, np.ones(run.dataset_size, bool), (k,))
        k += 1
    return findings + _same_order(runs)


# ----------------------------------------------------------------- one pass
def _one(run: Run, consider: np.ndarray, passes: tuple[int, ...]) -> list[Finding]:
    """The findings of one pass, for the missing indices where ``consider`` is true."""
    led = run.ledger
    best = led.best[:led.size]
    labels = _labels(run)
    missing = consider & (best != RANK["delivered"]) & (best != NEVER)
    parts: dict[str, dict[str, int]] = {}  # cause -> fate -> count
    examples: dict[str, tuple[int, ...]] = {}
    for cause in dict.fromkeys(labels[missing].tolist()):
        where = np.flatnonzero(missing & (labels == cause))
        fates = np.bincount(best[where], minlength=len(RANK))
        parts[cause] = {f: int(fates[k]) for f, k in RANK.items() if fates[k]}
        examples[cause] = _examples(run, where)
    never = np.flatnonzero(consider & (best == NEVER))
    for cause, count, seen in _never_sampled(run, never):
        parts.setdefault(cause, {})["never_sampled"] = count
        examples[cause] = (examples.get(cause, ()) + seen)[:EXAMPLES]
    out = [_finding(run, cause, sum(p.values()), examples[cause], passes, parts=p)
           for cause, p in parts.items() if sum(p.values())]
    return out + _extra(run, passes)


def _labels(run: Run) -> np.ndarray:
    """A cause for every position whose fate is dropped, failed, filtered or in flight."""
    led = run.ledger
    labels = np.full(led.size, "unexplained", dtype=object)
    occ = run.occurrences
    index, fate = occ.column("index"), occ.column("fate")
    pos = _positions(run, index)
    inside = pos >= 0
    stream = run.config.get("dataset_kind") == "iterable"
    workers = int(run.config.get("num_workers") or 0)
    labels[led.best[:led.size] == RANK["dropped"]] = (
        "iterable_drop_last_per_worker" if stream and workers > 1 else "drop_last")
    labels[led.best[:led.size] == RANK["filtered"]] = "filtered_none"
    if run.stop != "exhausted":
        labels[led.best[:led.size] == RANK["in_flight"]] = "loop_stopped_early"
    failed = inside & (fate == RANK["failed"])
    failed_pos = pos[failed]
    best_failed = led.best[failed_pos] == RANK["failed"]
    batches = list(zip(occ.column("rank")[failed].tolist(), occ.column("batch")[failed].tolist()))
    why = {batch: _failure(run, *batch) for batch in set(batches)}
    kinds = [why[batch] for batch in batches]
    labels[failed_pos[best_failed]] = np.array(kinds, dtype=object)[best_failed]
    return labels


def _failure(run: Run, rank: int, batch: int) -> str:
    """Why batch ``batch`` of ``rank`` failed, from the errors the loop saw."""
    for error in run.errors:
        if error.rank == rank and error.batch == batch:
            return {"exception": "worker_error"}.get(error.kind, error.kind)
    sent = run.of_kind("dispatch")
    mine = (sent.column("rank") == rank) & (sent.column("batch") == batch)
    worker = int(sent.column("worker")[mine][0]) if mine.any() else None
    if any(e.kind == "worker_died" and e.rank == rank and e.worker == worker
           for e in run.errors):
        return "worker_died"  # a batch the dead worker still held
    return "unexplained"


def _never_sampled(run: Run, where: np.ndarray) -> list[tuple[str, int, tuple[int, ...]]]:
    """Causes of the never-sampled indices at positions ``where``: ``(cause, count, examples)``."""
    count = len(where)
    if not count:
        return []
    design, expected = _design(run)
    if run.stop == "exhausted":  # the sampler ran to its end: it left them out
        if design is None:
            return [("unexplained", count, _examples(run, where))]
        if expected is None or expected == count:
            return [(design, count, _examples(run, where))]
        return [(design, min(expected, count), ()),
                ("unexplained", count - min(expected, count), ())]
    if design is None or expected is None:
        return [("loop_stopped_early", count, _examples(run, where))]
    left_out = min(expected, count)
    return [(design, left_out, ()), ("loop_stopped_early", count - left_out, ())]


def _design(run: Run) -> tuple[str | None, int | None]:
    """What leaves indices unsampled in a full pass, and how many when the settings say."""
    n, config = run.dataset_size, run.config
    settings = config.get("sampler_settings") or {}
    sampler = config.get("sampler", "")
    if config.get("dataset_kind") == "iterable":
        if any(e.kind == "exception" for e in run.errors):
            return "worker_error", None  # a generator that raised is finished
        if int(config.get("num_workers") or 0) > 1:
            return "iterable_floor_sharding", None
        return None, None
    if sampler == "DistributedSampler" and "num_samples" in settings:
        replicas = int(settings.get("num_replicas", 1))
        ranks = len(np.unique(run.occurrences.column("rank"))) or 1
        if ranks >= replicas:
            return "distributed_trim", max(n - int(settings.get("total_size", n)), 0)
        return "other_ranks_share", max(n - ranks * int(settings["num_samples"]), 0)
    if settings.get("replacement"):
        return "sampling_with_replacement", None
    if "num_samples" in settings and int(settings["num_samples"]) < n:
        return "num_samples", n - int(settings["num_samples"])
    return "sampler_subset", None


def _extra(run: Run, passes: tuple[int, ...]) -> list[Finding]:
    """Deliveries beyond each index's first, by cause."""
    deliveries = run.ledger.deliveries[:run.ledger.size]
    extra = int(np.maximum(deliveries - 1, 0).sum())
    if not extra:
        return []
    where = np.flatnonzero(deliveries > 1)
    config, settings = run.config, run.config.get("sampler_settings") or {}
    cause = "unexplained"
    if config.get("dataset_kind") == "iterable":
        if len(np.unique(run.of_kind("fetch").column("worker"))) > 1:
            cause = "iterable_not_sharded"
    elif config.get("sampler") == "DistributedSampler":
        if int(settings.get("total_size", 0)) > run.dataset_size:
            cause = "distributed_padding"
    elif settings.get("replacement"):
        cause = "sampling_with_replacement"
    elif int(settings.get("num_samples", 0)) > run.dataset_size:
        cause = "num_samples"
    finding = _finding(run, cause, extra, _examples(run, where), passes, kind="extra")
    return [finding]


# ----------------------------------------------------------------- several passes
def _resumed(before: Run, after: Run, passes: tuple[int, int]) -> list[Finding]:
    """A pass that stopped (the checkpoint) and the pass that resumed it: one epoch."""
    if before.dataset_size != after.dataset_size:
        raise ValueError("run_or_runs: the passes of one job must have the same dataset_size")
    n = before.dataset_size
    got_before = before.ledger.deliveries[:n] > 0
    got_after = after.ledger.deliveries[:n] > 0
    unsampled = after.ledger.best[:n] == NEVER
    repeat = np.flatnonzero(got_before & got_after)
    skip = np.flatnonzero(~got_before & unsampled)
    out = [_finding(after, "resume_repeat", len(repeat), _examples(after, repeat), passes,
                    kind="extra"),
           _finding(after, "resume_skip", len(skip), _examples(after, skip), passes)]
    out += _one(after, ~got_before & ~unsampled, passes)  # the resumed pass's own causes
    return [f for f in out if f.count > 0]


def _same_order(runs: list[Run]) -> list[Finding]:
    """Passes of a shuffling DistributedSampler that drew the order of the pass before."""
    repeats = []
    for k in range(1, len(runs)):
        a, b = runs[k - 1], runs[k]
        shuffles = all(r.config.get("sampler") == "DistributedSampler"
                       and (r.config.get("sampler_settings") or {}).get("shuffle")
                       for r in (a, b))
        order_a, order_b = a.occurrences.column("index"), b.occurrences.column("index")
        if shuffles and len(order_a) and np.array_equal(order_a, order_b):
            repeats.append(k)
    if not repeats:
        return []
    epoch = (runs[repeats[0]].config.get("sampler_settings") or {}).get("epoch", 0)
    names = ", ".join(str(k) for k in repeats)
    which = f"pass {names}" if len(repeats) == 1 else f"{len(repeats)} passes ({names})"
    message = (f"{which} drew exactly the same order as the pass before: "
               f"DistributedSampler(shuffle=True) shuffles by seed + epoch, and epoch "
               f"stayed {epoch}.")
    _, fix, lesson = CAUSES["set_epoch_missing"]
    return [Finding("set_epoch_missing", len(repeats), tuple(repeats), message, fix,
                    lesson, kind="order", passes=tuple(repeats))]


# ----------------------------------------------------------------- the words
def _finding(run: Run, cause: str, count: int, examples: tuple[int, ...],
             passes: tuple[int, ...], kind: str = "missing",
             parts: dict[str, int] | None = None) -> Finding:
    _, fix, lesson = CAUSES[cause]
    message = _message(run, cause, count, kind, passes, parts or {})
    return Finding(cause, count, examples, message, fix, lesson, kind, passes)


def _message(run: Run, cause: str, count: int, kind: str, passes: tuple[int, ...],
             parts: dict[str, int]) -> str:
    """One sentence; every number in it comes from the Run."""
    c, s = run.config, run.summary()
    n = run.dataset_size
    settings = c.get("sampler_settings") or {}
    sampler = c.get("sampler", "sampler")
    workers = int(c.get("num_workers") or 0)
    lost = f"{count} of {n} samples"
    first, last = (passes[0], passes[-1]) if passes else (0, 0)
    if kind == "extra":
        extra = {
            "iterable_not_sharded": f"{workers} workers each ran the IterableDataset's "
            "__iter__ over the whole stream",
            "distributed_padding": f"DistributedSampler pads the {n} samples to "
            f"{settings.get('total_size')} so that every one of "
            f"{settings.get('num_replicas')} ranks gets {settings.get('num_samples')}, "
            "by repeating the first indices",
            "sampling_with_replacement": f"the {sampler} draws with replacement",
            "num_samples": f"the {sampler} draws num_samples={settings.get('num_samples')}, "
            f"more than the {n} in the dataset",
            "resume_repeat": f"the resumed pass {last} delivered again indices that "
            f"pass {first} had delivered before its checkpoint",
            "unexplained": "no recorded cause explains them",
        }[cause]
        return f"{count} extra deliveries: {extra}."
    if cause == "loop_stopped_early":
        why = {"break": "the loop stopped early (a break, or zip at a shorter loader)",
               "max_batches": f"the loop stopped after max_batches={c.get('max_batches')} "
               "batches",
               "error": "the loop ended at an error",
               "interrupt": "the loop was interrupted"}.get(run.stop, "the loop stopped")
        return (f"{lost} never reached the loop because {why}: "
                f"{parts.get('in_flight', 0)} were prefetched (in flight) and "
                f"{parts.get('never_sampled', 0)} never sampled.")
    if cause in ("worker_error", "worker_died", "timeout"):
        errors = [e for e in run.errors if e.kind == {"worker_error": "exception"}.get(cause,
                                                                                        cause)]
        what = {"worker_error": f"{_plural(len(errors), 'exception')} in the dataset or "
                f"collate_fn ({', '.join(sorted({e.type or 'unknown' for e in errors}))}) "
                "failed the whole batch",
                "worker_died": f"worker {', '.join(sorted({str(e.worker) for e in errors}))} "
                "died and every batch it held went with it",
                "timeout": f"a batch took longer than timeout={c.get('timeout')} s and the "
                "loop ended there"}[cause]
        if parts.get("never_sampled"):  # a stream's generator is finished once it raises
            what += (f" ({parts.get('failed', 0)} in failed batches, and "
                     f"{parts['never_sampled']} the stream's generator never yielded: it "
                     "ends at its first exception)")
        return f"{lost} were lost: {what}."
    words = {
        "drop_last": f"drop_last=True threw away the final batch, smaller than "
        f"batch_size={c.get('batch_size')}",
        "iterable_drop_last_per_worker": f"with an IterableDataset each of the {workers} "
        "workers makes its own batches, and drop_last=True threw away every worker's "
        "partial last batch",
        "filtered_none": "the dataset returned None for them and the collate_fn left them "
        "out of their batches",
        "iterable_floor_sharding": f"none of the {workers} workers yielded them: the "
        "workers' shards leave them out"
        + (f" (floor division: {n} // {workers} each loses the last {n % workers})"
           if workers and count == n % workers else ""),
        "sampling_with_replacement": f"the {sampler} draws with replacement, so some "
        "indices come up more than once and others never",
        "num_samples": f"the {sampler} draws num_samples={settings.get('num_samples')} "
        "per pass",
        "distributed_trim": f"DistributedSampler(drop_last=True) trims the dataset to "
        f"{settings.get('total_size')} = {settings.get('num_replicas')} ranks x "
        f"{settings.get('num_samples')}",
        "other_ranks_share": f"this Run holds {len(np.unique(run.occurrences.column('rank')))}"
        f" of {settings.get('num_replicas')} ranks, and DistributedSampler gives each rank "
        "its own share",
        "sampler_subset": f"the {sampler} produced only {s['sampled']} distinct indices in "
        "a full pass",
        "resume_skip": f"pass {first} never delivered them and the pass {last} "
        "that resumed it never sampled them",
        "unexplained": "no recorded cause explains them",
    }[cause]
    verb = {"drop_last": "were dropped", "iterable_drop_last_per_worker": "were dropped",
            "filtered_none": "were filtered"}.get(cause, "never reached the loop")
    return f"{lost} {verb}: {words}."


# ----------------------------------------------------------------- helpers
def _as_runs(value: Any) -> list[Run]:
    if isinstance(value, Run):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"run_or_runs must be a dlviz.Run or a list of them, "
                        f"not {type(value).__name__}")
    if not value:
        raise ValueError("run_or_runs must hold at least one dlviz.Run")
    for item in value:
        if not isinstance(item, Run):
            raise TypeError(f"run_or_runs must be a dlviz.Run or a list of them, "
                            f"not a list of {type(item).__name__}")
    return list(value)


def _positions(run: Run, index: np.ndarray) -> np.ndarray:
    """Ledger positions of dataset indices (-1: outside the dataset)."""
    led = run.ledger
    if led.keys is None:
        return np.where((index >= 0) & (index < led.size), index, -1)
    pos = np.searchsorted(led.keys, index)
    ok = pos < led.size
    ok[ok] = led.keys[pos[ok]] == index[ok]
    return np.where(ok, pos, -1)


def _examples(run: Run, where: np.ndarray) -> tuple[int, ...]:
    return tuple(run.ledger.index_at()[where[:EXAMPLES]].tolist())



def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
