"""The benchmark's one timer. Every suite measures the same way: ``warmup``
untimed rounds, then ``repeats`` timed rounds; in each round every contender
runs once, in a fixed order (interleaved, so drift in the machine's state
touches all of them alike); a contender's number is the median of its
rounds, reported with the spread (min-max).

What one call costs is read by a clock: ``wall_clock`` (perf_counter around
the call, the default), a device clock (CUDA events, fusedopt.bench.gpu) or
``reported`` for contenders that time themselves and return seconds (the ps
suite's scheduled rounds). Times are seconds per unit: a call's time divided
by ``per`` (the steps one call runs).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping

Clock = Callable[[Callable[[], Any]], float]


def wall_clock(fn: Callable[[], Any]) -> float:
    """Seconds that ``fn()`` takes, by perf_counter."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reported(fn: Callable[[], Any]) -> float:
    """For a contender that times itself: the seconds ``fn()`` returns."""
    return float(fn())


def rounds(contenders: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, *,
           clock: Clock = wall_clock, per: float | Mapping[str, float] = 1,
           settle: Callable[[], Any] | None = None,
           on_round: Callable[[int, int, bool], Any] | None = None) -> dict[str, list[float]]:
    """Runs ``warmup`` untimed rounds, then ``repeats`` timed rounds of every
    contender in order; returns each contender's timed rounds in seconds per
    unit (a call's time by ``clock`` over ``per``, one number or one per
    contender). ``settle()`` runs after the warm-up (a device sync, so queued
    warm-up work is not timed); ``on_round(round, total, timed)`` before each
    round (progress)."""
    total = warmup + repeats
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(total):
        timed = r >= warmup
        if on_round is not None:
            on_round(r + 1, total, timed)
        if timed and r == warmup and settle is not None:
            settle()
        for name, fn in contenders.items():
            if not timed:
                fn()
                continue
            unit = per[name] if isinstance(per, Mapping) else per
            times[name].append(clock(fn) / unit)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """Each contender's median (contenders without a timed round left out)."""
    return {k: statistics.median(v) for k, v in times.items() if v}
