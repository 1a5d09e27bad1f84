"""Per-stage wall time and peak resident memory of a build (``report.json``'s ``timings_s``
and ``memory``).

Peak RSS per stage: on Linux, ``VmHWM`` of ``/proc/self/status`` is the process's peak
resident set, and writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS;
so each stage resets it on entry and reads it on exit (method ``"vmhwm"``). Where that is
not possible (not Linux, a kernel without the reset) every stage records
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the peak of the process so far (method
``"ru_maxrss"``: a stage's value is then an upper bound for it). A stage that runs twice
keeps the larger peak and the summed time. Each stage starts with ``release_memory`` (garbage
collection, then glibc's ``malloc_trim``), so what earlier stages dropped is not counted
again. Note that the reset lowers ``ru_maxrss`` too (Linux keeps one high-water mark): the
build's peak is the largest stage peak, not a parent's ``RUSAGE_CHILDREN``. GPU memory is
not RSS: on CUDA, torch's peak allocation per stage goes to ``cuda_peak_mb``.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS; False where that is impossible."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def max_rss_mb() -> float:
    """``ru_maxrss`` in MiB (kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def peak_rss_mb(method: str) -> float:
    """The peak RSS since the last reset (``vmhwm``) or of the whole process (``ru_maxrss``)."""
    kb = _status_kb("VmHWM") if method == "vmhwm" else None
    return kb / 1024 if kb is not None else max_rss_mb()


def cuda_peak_mb() -> float | None:
    """Peak CUDA memory allocated by torch (MiB) since the last reset; None without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return float(torch.cuda.max_memory_allocated()) / 2**20


@dataclass
class Stages:
    """Wall seconds and peak RSS (MiB) per stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    cuda_mb: dict[str, float] = field(default_factory=dict)
    method: str = field(default_factory=lambda: "vmhwm" if reset_peak() else "ru_maxrss")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._reset()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self._record(name)

    def _reset(self) -> None:
        release_memory()  # what earlier stages dropped goes before this stage's peak counts
        if self.method == "vmhwm":
            reset_peak()
        torch = sys.modules.get("torch")
        if torch is not None and cuda_peak_mb() is not None:
            torch.cuda.reset_peak_memory_stats()

    def _record(self, name: str) -> None:
        self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), peak_rss_mb(self.method))
        cuda = cuda_peak_mb()
        if cuda is not None:
            self.cuda_mb[name] = max(self.cuda_mb.get(name, 0.0), cuda)

    def memory_json(self) -> dict[str, Any]:
        """``report.json``'s ``memory``: the method, the build's peak, each stage's peak."""
        stages = {k: round(v, 1) for k, v in self.peak_mb.items()}
        out: dict[str, Any] = {"method": self.method, "unit": "MiB",
                               "peak_rss_mb": max(stages.values(), default=0.0),
                               "stages_peak_rss_mb": stages}
        if self.cuda_mb:
            out["cuda_peak_mb"] = {k: round(v, 1) for k, v in self.cuda_mb.items()}
        return out


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``):
    without it, RSS keeps the high-water mark of freed weights for later stages."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
