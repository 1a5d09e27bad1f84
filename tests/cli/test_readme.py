"""The README stays true: its spec example checks clean, its commands exist in the CLI."""

from __future__ import annotations

import re
from pathlib import Path

from prunec.compiler.driver import check_source
from prunec.runtime.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_spec_example_checks_clean() -> None:
    blocks = re.findall(r"```prune\n(.*?)```", README, re.DOTALL)
    assert blocks, "the README shows a spec"
    spec, diags = check_source(blocks[0], str(ROOT / "specs" / "readme.prune"))
    assert spec is not None and [d for d in diags if d.is_error] == []


def test_readme_commands_exist() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    named = set(re.findall(r"^\| `prunec (\w+)", README, re.MULTILINE))
    assert named and named <= set(sub.choices)  # type: ignore[attr-defined]


def test_readme_main_command_names_a_real_spec() -> None:
    first_screen = README.split("## A spec")[0]
    specs = re.findall(r"prunec build (specs/\S+\.prune)", first_screen)
    assert specs and all((ROOT / s).is_file() for s in specs)
