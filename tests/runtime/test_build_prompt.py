"""A ``probe { mode = prompt }`` build end to end (tiny model, manual static plan first): the
three graphs and manifests, the build's evaluation, ``prunec eval --prompt-len`` equal to
the PyTorch reference (``PromptRunner`` with the H the build calibrates), ``prunec generate``
on the artifact, and the per-batch runtime refusing it."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import buildkit
import pytest
from test_build_probe import MAX_LEN, probe_spec
from tinymodels import tiny_llama

from prunec.compiler.ir import KeptScope, ProbeMode
from prunec.compiler.plan import Plan
from prunec.runtime.build import BuildOptions, build
from prunec.runtime.cli import main

SAMPLES, SEQ, PROMPT = 4, 24, 10
Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="module", params=list(KeptScope))
def prompt_build(request: Any, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Any:
    """(spec, artifact, build result) with per-sequence and with per-batch kept sets."""
    spec: Any = probe_spec(tiny_dir)
    spec = dataclasses.replace(spec, probe=dataclasses.replace(
        spec.probe, mode=ProbeMode.PROMPT, compensate=True, kept=request.param))
    out = tmp_path_factory.mktemp("prompt") / "prompt"
    return spec, out, build(spec, Path.cwd(), BuildOptions(out, quiet=True))


def test_build_writes_the_three_graphs(prompt_build: Any) -> None:
    _, out, result = prompt_build
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.gather.onnx", "model.decode.onnx", "model.gating.json",
            "model.kv.json"} <= names and "model.history.npz" not in names
    report = result.report
    assert report["passed"] and report["genai"]["written"] is False
    manifest = json.loads((out / "model.gating.json").read_text())
    assert manifest["max_len"] == MAX_LEN and manifest["compensate"] is True
    assert json.loads((out / "model.kv.json").read_text())["context_length"] == MAX_LEN


def reference_ppl(spec: Any, out: Path, tiny_tok: Any) -> float:
    """The continuation perplexity of the PyTorch reference on the artifact's plan and H."""
    from prunec.passes.probe import PromptRunner, calibrate_history
    from prunec.passes.reference import apply_plan_, shape_of
    from prunec.runtime.data import DataArgs, load_data_args, load_dataset
    from prunec.runtime.evaluate import perplexity

    plan = Plan.from_json(json.loads((out / "plan.json").read_text()))
    model = apply_plan_(copy.deepcopy(tiny_llama(0)), plan, shape_of(tiny_llama(0)))
    calib = load_dataset(spec.dataset("calib"), Path.cwd(), tiny_tok)
    hist = calibrate_history(model, shape_of(model), spec.probe, calib, MAX_LEN)
    run = PromptRunner(model, shape_of(model), spec.probe, hist)
    data = load_data_args(DataArgs((str(buildkit.KJV_EVAL),), "text", None, SAMPLES, SEQ, 0,
                                   None), lambda: tiny_tok)
    return perplexity(lambda b: run.run(b, PROMPT), data, prompt_len=PROMPT).ppl


def test_eval_prompt_len_equals_the_reference(prompt_build: Any, tiny_tok: Any,
                                              capsys: Capsys) -> None:
    spec, out, _ = prompt_build
    args = ["eval", str(out), "--data", str(buildkit.KJV_EVAL), "--samples", str(SAMPLES),
            "--seq-len", str(SEQ), "--json", "-q"]
    assert main([*args, "--prompt-len", str(PROMPT)]) == 0
    got = json.loads(capsys.readouterr().out)["perplexity"]["data"]["pruned"]
    assert got["tokens"] == SAMPLES * (SEQ - PROMPT)
    assert got["ppl"] == pytest.approx(reference_ppl(spec, out, tiny_tok), rel=1e-4)
    assert main([*args, "--prompt-len", "1"]) == 1  # the probe needs two prompt tokens
    assert "P0403" in capsys.readouterr().err


def test_generate_runs_the_artifact(prompt_build: Any, capsys: Capsys) -> None:
    _, out, _ = prompt_build
    assert main(["generate", str(out), "In the beginning God created", "--max-new-tokens",
                 "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert 0 < len(got["tokens"]) <= 8 and got["time_to_first_token_s"] > 0


def test_the_per_batch_runner_refuses_it(prompt_build: Any, capsys: Capsys) -> None:
    _, out, _ = prompt_build
    assert main(["run", str(out), "--data", str(buildkit.KJV_EVAL), "--samples", "2",
                 "--seq-len", str(SEQ)]) == 1
    err = capsys.readouterr().err
    assert "P0404" in err and "mode = prompt" in err and "Traceback" not in err

