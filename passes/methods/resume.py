"""Resumable searches: the committed state is written after every step, atomically.

The resume file (JSON) holds the plan so far (with its decisions), the score trajectory,
the dense score, the counters, and a fingerprint of what the search depends on (the static
section without spans, the model and calibration hashes, the evaluation mode). A resumed
search rebuilds its caches from the saved plan and continues; since a step depends only on
the committed plan, it reaches the same final plan as an uninterrupted run. A resume file
with another fingerprint is refused (P0705) rather than silently mixed in.
``SearchState`` (the committed state) lives here so that ``search`` imports ``resume`` and
not the other way round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic
from prunec.compiler.ir import StaticPrune, strip_spans
from prunec.compiler.plan import Plan
from prunec.passes.methods.lock import write_atomic
from prunec.passes.methods.types import StepScore

FORMAT = "prunec-search-resume/1"


@dataclass
class SearchState:
    """A search's committed state: what a resume file holds (updated after every step)."""

    plan: Plan
    trajectory: list[StepScore]
    dense_score: float | None
    layer_forwards: float = 0.0
    evaluations: int = 0
    wall_s: float = 0.0


def fingerprint(static: StaticPrune, hashes: Mapping[str, str], mode: str) -> str:
    text = repr(strip_spans(static)) + repr(sorted(hashes.items())) + mode
    return hashlib.sha256(text.encode()).hexdigest()


def save(path: str | None, key: str, state: SearchState) -> None:
    if path is None:
        return
    data = {
        "format": FORMAT, "key": key, "plan": state.plan.to_json(),
        "trajectory": [vars(t) for t in state.trajectory], "dense_score": state.dense_score,
        "layer_forwards": state.layer_forwards, "evaluations": state.evaluations,
        "wall_s": state.wall_s,
    }
    write_atomic(Path(path), json.dumps(data, indent=1, sort_keys=True))


def load(path: str | None, key: str, static: StaticPrune) -> SearchState | None:
    """The saved state, None when there is no file yet; P0705 when it belongs elsewhere."""
    if path is None or not Path(path).exists():
        return None
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        ok = data.get("format") == FORMAT and data.get("key") == key
        plan = Plan.from_json(data["plan"])
        trajectory = [StepScore(**t) for t in data["trajectory"]]
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CompileError((Diagnostic.error(
            "P0705", f"the resume file {path} belongs to another search (or is damaged)",
            static.span, hint="delete it to start the search afresh"),))
    return SearchState(plan, trajectory, data.get("dense_score"),
                       float(data["layer_forwards"]), int(data["evaluations"]),
                       float(data["wall_s"]))
