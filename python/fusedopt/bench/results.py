"""The table suites' result row (one contender on one case) and the
machine it ran on: what fusedopt-bench's JSON (schema fusedopt-bench/1)
holds."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    suite: str
    case: str
    algorithm: str
    dtype: str
    tensors: int
    elements: int
    contender: str
    check: str  # "ok", "WRONG: ...", "skipped"
    ms: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    gb_per_s: float | None = None
    pct_roofline: float | None = None
    speedup_vs_raw: float | None = None
    speedup_vs_keras: float | None = None
    extra: dict = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import tensorflow as tf

    import fusedopt

    return dict(cpu=cpu, cores=os.cpu_count(), memory_gib=mem_gib, python=platform.python_version(),
                tensorflow=tf.__version__, fusedopt=fusedopt.build_info(),
                gpus=[d.name for d in tf.config.list_physical_devices("GPU")],
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
