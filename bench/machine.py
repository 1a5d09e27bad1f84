"""The ``machine`` entry every benchmark JSON carries: what ran it and how loaded it was.

One home for the machine description of ``bench/results/*.json``: CPU model, cores,
platform, Python, torch / onnxruntime versions (read from the installed distributions, so
this module imports neither) and torch's thread count when torch is loaded, plus the 1, 5
and 15 minute load averages (``os.getloadavg``) twice: ``load_before`` when the benchmark
starts (``start()``) and ``load_after`` when its result is written (``Machine.entry()``).
A run is "idle" only if both say so; the README quotes these values, never the word alone.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    """The machine and software, without its load."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu")}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


@dataclass(frozen=True)
class Machine:
    """A benchmark's machine, with the load average recorded when it started."""

    load_before: list[float]
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))

    def entry(self) -> dict[str, Any]:
        """The JSON ``machine`` entry as of now: ``load_after`` is the load at this call."""
        return {**describe(), "started": self.started, "load_before": self.load_before,
                "load_after": load_average()}


def start() -> Machine:
    """Call when the measured work begins; write ``.entry()`` with the result."""
    return Machine(load_average())
