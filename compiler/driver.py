"""The front-end's public entry points: read -> parse -> lower -> model shape -> checks.

``load_spec(path)`` and ``check_source(text, filename)`` return ``(spec, diagnostics)``:
``spec`` is ``None`` exactly when some diagnostic is an error, so a backend that gets a
``Spec`` may trust the IR invariants (ir.py). Diagnostics are sorted by position. Any
input — a missing file, a directory, binary or invalid UTF-8 bytes, a megabyte-long line,
deep nesting — yields diagnostics, never an exception (a ``RecursionError`` anywhere in the
front-end becomes P0003). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from lark.exceptions import VisitError

from prunec.compiler.checks import Context, run_checks
from prunec.compiler.diagnostics import Diagnostic, Severity, Span
from prunec.compiler.ir import ModelShape, Spec
from prunec.compiler.lower import Lower
from prunec.compiler.shape import ShapeProblem, model_shape
from prunec.grammar.parser import SyntaxProblem, parse_all

MAX_BYTES = 16 * 1024 * 1024


def load_spec(path: str | Path) -> tuple[Spec | None, list[Diagnostic]]:
    """Read, parse, lower and check the spec at ``path``."""
    text, diags = read_source(path)
    if text is None:
        return None, diags
    return check_source(text, str(path))


def check_source(text: str, filename: str = "<string>") -> tuple[Spec | None, list[Diagnostic]]:
    """Parse, lower and check ``text``; relative paths resolve against ``filename``'s folder."""
    try:
        spec, diags = _front_end(text, filename)
    except VisitError as exc:
        if not isinstance(exc.orig_exc, RecursionError):
            raise
        spec, diags = None, [_too_deep(filename)]
    except RecursionError:
        spec, diags = None, [_too_deep(filename)]
    diags = sorted(diags, key=lambda d: (d.span.line, d.span.col, d.code))
    if any(d.is_error for d in diags):  # an unused dataset is noise next to an error
        return None, [d for d in diags if d.code != "P0220"]
    return spec, diags


def _too_deep(filename: str) -> Diagnostic:
    return Diagnostic.error("P0003", "the spec is nested too deeply to process",
                            Span.unknown(filename))


def read_source(path: str | Path) -> tuple[str | None, list[Diagnostic]]:
    """The text of a spec file, or the diagnostic saying why there is none."""
    p, where = Path(path), Span.unknown(str(path))
    if not p.exists():
        return None, [Diagnostic.error("P0001", f"no such file: {path}", where)]
    if p.is_dir():
        return None, [Diagnostic.error("P0001", f"{path} is a directory, not a spec file",
                                       where, "pass a .prune file")]
    try:
        data = p.read_bytes()
    except OSError as exc:
        return None, [Diagnostic.error("P0001", f"cannot read {path}: {exc.strerror}", where)]
    return decode(data, str(path))


def decode(data: bytes, filename: str) -> tuple[str | None, list[Diagnostic]]:
    """UTF-8 text (a BOM is dropped) or a P0002/P0003 diagnostic at the offending byte."""
    if len(data) > MAX_BYTES:
        return None, [Diagnostic.error("P0003", f"the spec is larger than {MAX_BYTES} bytes",
                                       Span.unknown(filename))]
    bad = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start if bad < 0 else min(bad, exc.start)
    if bad >= 0:
        return None, [_binary(data, bad, filename)]
    return text.removeprefix("\ufeff"), []


def _binary(data: bytes, offset: int, filename: str) -> Diagnostic:
    line = data.count(b"\n", 0, offset) + 1
    col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    byte = data[offset]
    what = "a NUL byte" if byte == 0 else f"the byte 0x{byte:02x}, which is not UTF-8"
    return Diagnostic.error("P0002", f"the spec is not text: {what}",
                            Span(filename, line, col, line, col + 1),
                            "specs are UTF-8 text files")


def _front_end(text: str, filename: str) -> tuple[Spec | None, list[Diagnostic]]:
    tree, problems = parse_all(text)
    if tree is None:
        return None, [syntax_diagnostic(p, filename) for p in problems]
    lower = Lower(filename)
    spec: Spec = lower.transform(tree)
    diags = list(lower.sink)
    spec_dir = Path(filename).parent
    shape, shape_diags = _shape(spec, spec_dir, diags) if lower.model_known else (None, [])
    diags += shape_diags
    diags += run_checks(Context(spec, shape, spec_dir))
    return spec, diags


def syntax_diagnostic(p: SyntaxProblem, filename: str) -> Diagnostic:
    span = Span(filename, p.line, p.col, p.line, p.end_col)
    return Diagnostic.error(p.code, p.message, span, p.hint)


def _shape(spec: Spec, spec_dir: Path, so_far: list[Diagnostic]
           ) -> tuple[ModelShape | None, list[Diagnostic]]:
    if any(d.code in ("P0110", "P0111") for d in so_far):
        return None, []
    try:
        return model_shape(spec.model, spec_dir), []
    except ShapeProblem as p:
        sev = Severity.WARNING if p.code == "P0304" else Severity.ERROR
        return None, [Diagnostic(p.code, sev, p.message, spec.model.span, p.hint)]
