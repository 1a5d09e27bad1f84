"""A ``probe { mode = prompt }`` spec on a tiny Qwen3 directory through the CLI: ``prunec
check`` accepts it, ``prunec build`` writes the three-graph artifact for the family, and
``prunec generate --json`` decodes with it (no false accept). The numbers of those graphs
against HF are ``tests/passes/probe/test_prompt_families.py``'s."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_family_probe import KJV, save_model, spec_text

from prunec.runtime.cli import main


def test_prompt_spec_checks_builds_and_generates(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "prompt.prune"
    spec.write_text(spec_text("prompt"))
    shutil.copy(KJV, tmp_path / KJV.name)
    save_model("qwen3", tmp_path / "tiny")
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["passed"]
    manifest = json.loads((out / "model.gating.json").read_text())
    assert manifest["policy"]["mode"] == "prompt" and manifest["model"]["architecture"] == "qwen3"
    assert {"model.onnx", "model.gather.onnx", "model.decode.onnx"} <= {
        p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["generate", str(out), "In the beginning God created", "--max-new-tokens",
                 "6", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert 0 < len(got["tokens"]) <= 6 and got["time_to_first_token_s"] > 0
