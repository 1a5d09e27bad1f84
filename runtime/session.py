"""onnxruntime sessions with the spec's execution providers, in order of preference.

Rules:
- the requested providers (``OnnxExport.providers``, e.g. cuda, cpu) are kept in order,
  minus those this onnxruntime build does not offer (CUDA needs onnxruntime-gpu);
- the CPU provider is always appended last as the fallback;
- the providers the session actually uses (onnxruntime drops CUDA when no GPU is found) are
  reported in ``OrtSession.used``, and every requested-but-unused provider gets a note.
Thread counts are onnxruntime's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.ir import Provider

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class OrtSession:
    session: Any  # onnxruntime.InferenceSession
    requested: tuple[str, ...]
    used: tuple[str, ...]
    notes: tuple[str, ...]


def available_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[
    tuple[str, ...], tuple[str, ...]
]:
    """(providers to ask onnxruntime for, notes about requested ones left out)."""
    chosen = [p for p in requested if p in available]
    notes = [f"{p} is not available in this onnxruntime build (available: "
             f"{', '.join(available)})" for p in requested if p not in available]
    if CPU not in chosen:
        chosen.append(CPU)
    return tuple(dict.fromkeys(chosen)), tuple(notes)


def open_session(path: Path, providers: Sequence[Provider] = (Provider.CPU,)) -> OrtSession:
    """An InferenceSession on ``path`` with the best available of ``providers``."""
    import onnxruntime as ort

    requested = tuple(p.ort_name for p in providers) or (CPU,)
    chosen, notes = choose_providers(requested, available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider fallbacks are reported in notes
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(chosen))
    used = tuple(session.get_providers())
    notes += tuple(f"{p} could not be used (no device?); fell back to {used[0]}"
                   for p in chosen if p not in used)
    return OrtSession(session, requested, used, notes)
