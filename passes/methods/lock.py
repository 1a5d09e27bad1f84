"""Plan locks: a computed plan written next to the artifact, re-applied without a search.

A lock (``plan.lock.json``) holds every decision in order with its score, the final plan
(with its ``reconstruct`` setting; the refit itself is recomputed from the calibration
tokens, deterministically, when the lock is applied), the search statistics that follow
from the inputs (evaluations, dense score, trajectory, mode: not the wall time or the
layer-forwards, which depend on the machine and on ``--workers``; report.json has those, so
the same inputs write the same lock, byte for byte), and three sha256 hashes:
- ``spec``: the static section and the dataset it scores on, spans stripped (``spec_hash``);
- ``model``: every tensor of the model's state (name, dtype, shape, bytes);
- ``calib``: the calibration token ids (shape + bytes), or "none".
Applying a lock checks the three hashes first; any change is a ``CompileError`` pointing at
the static block (P0701 spec, P0702 model, P0703 calibration; P0704 unreadable lock).
Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import Spec, StaticPrune, strip_spans
from prunec.compiler.plan import Plan
from prunec.passes.methods.types import (
    MethodOptions,
    MethodResult,
    SearchStats,
    StepScore,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "prunec-plan-lock/1"
_CODES = {"spec": "P0701", "model": "P0702", "calib": "P0703"}


def spec_hash(spec: Spec) -> str:
    """Hash of what a static plan depends on in the spec: the static block and its dataset."""
    static = spec.static
    parts: list[str] = [repr(strip_spans(static))]
    if static is not None and static.score_dataset:
        parts.append(repr(strip_spans(spec.dataset(static.score_dataset))))
    return _sha(("\n".join(parts)).encode())


def model_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


def calib_hash(calib: torch.Tensor | None) -> str:
    if calib is None:
        return "none"
    t = calib.detach().to(dtype=_long()).contiguous().cpu()
    return _sha(f"{tuple(t.shape)}".encode() + t.numpy().tobytes())


def current_hashes(static: StaticPrune, model: nn.Module, calib: torch.Tensor | None,
                   options: MethodOptions) -> dict[str, str]:
    spec = options.spec_hash or _sha(repr(strip_spans(static)).encode())
    return {"spec": spec, "model": model_hash(model), "calib": calib_hash(calib)}


def lock_json(result: MethodResult) -> dict[str, Any]:
    s = result.stats
    return {
        "format": FORMAT,
        "hashes": dict(result.hashes),
        "plan": result.plan.to_json(),
        "stats": {"candidate_evaluations": s.candidate_evaluations,
                  "dense_score": s.dense_score, "mode": s.mode,
                  "trajectory": [vars(t) for t in s.trajectory]},
    }


def write_lock(path: str | Path, result: MethodResult) -> Path:
    path = Path(path)
    write_atomic(path, json.dumps(lock_json(result), indent=1, sort_keys=True))
    return path


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_lock(path: str | Path, span: Span | None = None) -> dict[str, Any]:
    """A parsed lock; P0704 when it cannot be read or is not a prunec plan lock."""
    where = span or Span.unknown(str(path))
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        Plan.from_json(data["plan"])
        if data.get("format") != FORMAT or not isinstance(data.get("hashes"), dict):
            raise ValueError("not a prunec plan lock")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompileError((Diagnostic.error(
            "P0704", f"cannot use plan lock {path}: {exc}", where,
            hint="delete the lock to recompute the plan"),)) from None
    return dict(data)


def apply_lock(static: StaticPrune, lock: Mapping[str, Any],
               hashes: Mapping[str, str]) -> MethodResult:
    """The locked plan, after checking that nothing it was computed from has changed."""
    stale = [k for k in ("spec", "model", "calib") if lock["hashes"].get(k) != hashes[k]]
    if stale:
        raise CompileError(tuple(Diagnostic.error(
            _CODES[k], f"the plan lock is stale: the {_WHAT[k]} changed since it was written",
            static.span, hint="delete plan.lock.json (or build without the lock) to recompute")
            for k in stale))
    return result_from_lock(lock, hashes)


_WHAT = {"spec": "static section of the spec", "model": "model weights",
         "calib": "calibration data"}


def result_from_lock(lock: Mapping[str, Any], hashes: Mapping[str, str]) -> MethodResult:
    st = lock.get("stats", {})
    stats = SearchStats(
        layer_forwards=float(st.get("layer_forwards", 0.0)),
        candidate_evaluations=int(st.get("candidate_evaluations", 0)),
        wall_s=float(st.get("wall_s", 0.0)), dense_score=st.get("dense_score"),
        trajectory=tuple(StepScore(**t) for t in st.get("trajectory", [])),
        mode=str(st.get("mode", "lock")))
    return MethodResult(Plan.from_json(lock["plan"]), stats,
                        hashes=MappingProxyType(dict(hashes)), from_lock=True)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def _long() -> Any:
    import torch

    return torch.long
