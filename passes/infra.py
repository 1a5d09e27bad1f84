"""Pass infrastructure: a pass is a named unit that rewrites a GraphModule and says what
it changed; a PassManager runs an ordered tuple of passes and collects a PassReport.

Modelled on onnx-ir's ``_pass_infra`` (itself from torch.fx.passes.infra):
- a pass returns ``PassResult(module, modified, counts)``; ``counts`` are per rule
  ("query heads removed": 12, ...) and ``modified`` is true iff some count is non-zero;
- passes never print; the report is data (``PassReport.lines()`` renders it);
- a ``CompileError`` (a user-facing problem) propagates unchanged; any other exception is a
  compiler bug and is re-raised as ``PassError`` naming the failing pass and those before it.
All passes here work in place on the GraphModule (``in_place = True``) and recompile it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from torch.fx import GraphModule

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.analysis import GraphStructure


@dataclass(frozen=True)
class PassContext:
    """What every pass may read: the plan, the model's shape and the analysed structure."""

    plan: Plan
    shape: ModelShape
    structure: GraphStructure


@dataclass(frozen=True)
class PassResult:
    module: GraphModule
    modified: bool
    counts: Mapping[str, int]


class GraphPass(Protocol):
    """What a PassManager runs: a named callable that says whether it works in place."""

    @property
    def name(self) -> str: ...

    @property
    def in_place(self) -> bool: ...

    def __call__(self, gm: GraphModule, ctx: PassContext) -> PassResult: ...


Counts = dict[str, int]


@dataclass(frozen=True)
class FunctionPass:
    """A pass from a function ``fn(gm, ctx) -> counts`` that rewrites ``gm`` in place."""

    name: str
    fn: Callable[[GraphModule, PassContext], Counts]
    in_place: bool = True

    def __call__(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        counts = self.fn(gm, ctx)
        modified = any(counts.values())
        if modified:
            gm.recompile()
        return PassResult(gm, modified, counts)


class PassError(RuntimeError):
    """A pass failed for a reason that is not the user's: a compiler bug."""


@dataclass(frozen=True)
class PassRecord:
    """What one pass did (the report keeps no reference to the graph)."""

    name: str
    modified: bool
    counts: dict[str, int]


@dataclass(frozen=True)
class PassReport:
    """Per pass, in order: its name, whether it modified the graph, and its counts."""

    results: tuple[PassRecord, ...]

    def counts(self, name: str) -> dict[str, int]:
        for record in self.results:
            if record.name == name:
                return record.counts
        raise KeyError(name)

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            changes = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v) or "no change"
            out.append(f"{r.name}: {changes}")
        return out

    def to_json(self) -> list[dict[str, object]]:
        return [{"pass": r.name, "modified": r.modified, "counts": dict(r.counts)}
                for r in self.results]


@dataclass(frozen=True)
class PassManager:
    passes: tuple[GraphPass, ...]

    def run(self, gm: GraphModule, ctx: PassContext) -> tuple[GraphModule, PassReport]:
        records: list[PassRecord] = []
        for graph_pass in self.passes:
            try:
                result = graph_pass(gm, ctx)
            except CompileError:
                raise
            except Exception as exc:
                before = ", ".join(r.name for r in records) or "none"
                raise PassError(f"pass {graph_pass.name!r} failed (passes run before it: "
                                f"{before}): {exc}") from exc
            records.append(PassRecord(graph_pass.name, result.modified, dict(result.counts)))
            gm = result.module
        return gm, PassReport(tuple(records))
