"""Source spans and the one Diagnostic type every stage of prunec reports with.

Invariants:
- A ``Span`` is 1-based (line and column), ``end_line``/``end_col`` point one past the last
  character; ``Span.unknown(file)`` marks a whole-file problem (line 1, col 1).
- A ``Diagnostic`` is immutable; rendering (rich, plain text, JSON) lives in
  ``prunec.compiler.render`` so that this module stays dependency-free.
- ``CompileError`` carries one or more diagnostics across a stage boundary; it is the only
  exception a user-facing command turns into output (anything else is a compiler bug).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file (1-based line/col; end is exclusive)."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def unknown(file: str) -> Span:
        return Span(file, 1, 1, 1, 1)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Diagnostic:
    """One finding: ``file:line:col: error[P0123]: message`` plus an optional hint."""

    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None

    @staticmethod
    def error(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
        return Diagnostic(code, Severity.ERROR, message, span, hint)

    @staticmethod
    def warning(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
        return Diagnostic(code, Severity.WARNING, message, span, hint)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def headline(self) -> str:
        return f"{self.span}: {self.severity.value}[{self.code}]: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "span": self.span.to_json(),
            "hint": self.hint,
        }


@dataclass
class CompileError(Exception):
    """Raised to stop a stage; carries every diagnostic found so far."""

    diagnostics: tuple[Diagnostic, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return "\n".join(d.headline() for d in self.diagnostics)


def user_error(code: str, message: str, where: str, hint: str | None = None) -> CompileError:
    """A CompileError of one diagnostic about an input with no spec position (a file, an
    artifact, a command-line value): ``where`` names it."""
    return CompileError((Diagnostic.error(code, message, Span.unknown(where), hint),))
