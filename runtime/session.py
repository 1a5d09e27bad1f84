"""onnxruntime sessions with the spec's execution providers, in order of preference.

Rules:
- the requested providers (``OnnxExport.providers``, e.g. cuda, cpu) are kept in order,
  minus those this onnxruntime build does not offer (CUDA needs onnxruntime-gpu);
- the CPU provider is always appended last as the fallback;
- the providers the session actually uses (onnxruntime drops CUDA when no GPU is found) are
  reported in ``OrtSession.used``, and every requested-but-unused provider gets a note.
Thread counts are onnxruntime's defaults. ``prepack = False`` (the evaluation sessions of
``artifact_runner``: ``prunec build`` and ``prunec eval``) sets ``session.disable_prepacking``:
MLAS otherwise keeps a packed copy of each MatMul weight, and of a tied embedding (also
read by Gather) beside the original (+106 MiB at the peak on a 4-layer SmolLM2-shaped model).
``artifact_runner`` opens an artifact's ONNX file for evaluation: a static graph as a plain
session, a gated one (a ``.gating.json`` manifest beside it) as a ``GatedSession`` that
carries the history H from batch to batch.
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


def open_session(path: Path, providers: Sequence[Provider] = (Provider.CPU,),
                 prepack: bool = True) -> OrtSession:
    """An InferenceSession on ``path`` with the best available of ``providers``."""
    import onnxruntime as ort

    requested = tuple(p.ort_name for p in providers) or (CPU,)
    chosen, notes = choose_providers(requested, available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider fallbacks are reported in notes
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(chosen))
    used = tuple(session.get_providers())
    notes += tuple(f"{p} could not be used (no device?); fell back to {used[0]}"
                   for p in chosen if p not in used)
    return OrtSession(session, requested, used, notes)


Runner = tuple[OrtSession, Any, Any]  # (session, logits_fn, reset_fn or None)


def artifact_runner(onnx_path: Path, providers: tuple[Provider, ...],
                    prompt_len: int | None = None) -> Runner:
    """(OrtSession, logits_fn, reset_fn) for an artifact's ONNX file. A gated one (with a
    ``.gating.json`` manifest next to it) carries H across batches; ``reset_fn`` restores the
    shipped initial H (None for a static artifact). A ``probe { mode = prompt }`` one scores
    each sequence from its first ``prompt_len`` tokens (``prompt_mode.prompt_runner``)."""
    import json

    from prunec.runtime.evaluate import onnx_logits
    from prunec.runtime.prompt_mode import is_prompt_mode, prompt_runner

    gating = onnx_path.with_suffix(".gating.json")
    if not gating.is_file():
        session = open_session(onnx_path, providers, prepack=False)
        return session, onnx_logits(session.session), None
    if is_prompt_mode(json.loads(gating.read_text())):
        return prompt_runner(onnx_path, providers, prompt_len)  # type: ignore[no-any-return]
    return gated_runner(onnx_path, providers)


def gated_runner(onnx_path: Path, providers: tuple[Provider, ...]) -> Runner:
    import torch

    from prunec.runtime.gated import GatedSession

    requested = tuple(p.ort_name for p in providers)
    chosen, notes = choose_providers(requested, available_providers())
    runner = GatedSession(onnx_path, providers=list(chosen))

    def run(batch: Any) -> Any:
        return torch.from_numpy(runner.run(batch.numpy()))

    used = tuple(runner.session.get_providers())
    return OrtSession(runner.session, requested, used, notes), run, runner.reset
