"""Where a build's outputs go: the one rule for the artifact directory and its siblings.

``output_dir``: ``-o DIR`` when given, else the spec's ``output`` relative to the spec's
directory, else ``build/<spec name>`` relative to the current directory. ``prunec explain``
shows it, ``prunec build`` writes there, ``prunec eval SPEC`` looks there.
Beside (never inside) the artifact ``DIR`` live two build-state files:
``.DIR.search-state.json`` (a static search's progress, for ``--resume``) and
``DIR.failed-report.json`` (the report of a build whose gate failed). Nothing here touches
the file system.
"""

from __future__ import annotations

from pathlib import Path

from prunec.compiler.ir import Spec

DEFAULT_ROOT = "build"


def output_dir(spec: Spec, spec_dir: Path, override: Path | None = None) -> Path:
    """The artifact directory of ``spec`` (see the module docstring)."""
    if override is not None:
        return override
    if spec.output:
        return Path(spec_dir) / str(spec.output)
    return Path(DEFAULT_ROOT) / str(spec.name)


def resume_path(out: Path) -> Path:
    """Where a search keeps its state between steps: beside the artifact, never inside it."""
    return out.with_name(f".{out.name}.search-state.json")


def failed_report_path(out: Path) -> Path:
    """The report of a build whose gate failed (nothing was published)."""
    return out.parent / f"{out.name}.failed-report.json"
