"""A build with a probe policy: static plan + gated ONNX (H shipped, carried at eval time)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.compiler.ir import (
    LayerSelector,
    OnnxExport,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    ProbeTarget,
    Provider,
    SelectorKind,
)
from prunec.runtime.build import BuildOptions, build

MAX_LEN = 48  # the spec's `export onnx { max_len }`: the gated graph's longest sequence


def probe_spec(tiny_dir: Path) -> object:
    skip = (LayerSelector(SelectorKind.INDEX, 0, None, buildkit.SPAN),)
    policy = ProbePolicy(0.4, (ProbeTarget.MLP, ProbeTarget.HEADS), skip, ProbeMode.PROBE,
                         0.5, 0.25, 0.99, "calib", ProbeMetric.PPSP, 16, buildkit.span(50))
    datasets = (buildkit.dataset("eval", buildkit.KJV_EVAL, samples=4, seq_len=32),
                buildkit.dataset("calib", buildkit.KJV_CALIB, samples=4, seq_len=32))
    spec = buildkit.make_spec(tiny_dir, plan=buildkit.manual_plan(), datasets=datasets)
    export = OnnxExport("model.onnx", 18, True, (Provider.CPU,), buildkit.span(20),
                        max_len=MAX_LEN)
    return dataclasses.replace(spec, probe=policy, exports=(export,))


@pytest.fixture(scope="module")
def gated_build(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("gated") / "gated"
    spec = probe_spec(tiny_dir)
    return spec, out, build(spec, Path.cwd(), BuildOptions(out, quiet=True))  # type: ignore


def test_probe_build(gated_build: Any) -> None:
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import perplexity
    from prunec.runtime.gated import GatedSession
    from prunec.runtime.models import load_model

    spec, out, result = gated_build
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.gating.json", "model.history.npz", "report.json"} <= names
    r = result.report
    assert r["passed"] and "gated" in r["compile"]
    ppl = r["perplexity"]["eval"]

    import torch

    session = GatedSession(out)
    tok = load_model(spec.model, Path.cwd()).tokenizer  # type: ignore[attr-defined]
    data = load_dataset(spec.datasets[0], Path.cwd(), tok)  # type: ignore[attr-defined]
    again = perplexity(lambda b: torch.from_numpy(session.run(b.numpy())), data, 4)
    assert again.ppl == pytest.approx(ppl["pruned"]["ppl"], rel=1e-5), "H reset per dataset"
    manifest = json.loads((out / "model.gating.json").read_text())
    assert manifest["keep"] and manifest["max_len"] == MAX_LEN, "the IR's max_len, obeyed"


def test_eval_gated_artifact(gated_build: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`prunec eval ARTIFACT --data` runs a gated artifact with its H, like the build did."""
    from prunec.runtime.cli import main

    _, out, result = gated_build
    report = result.report
    args = ["eval", str(out), "--data", str(buildkit.KJV_EVAL), "--samples", "4",
            "--seq-len", "32", "--json", "-q"]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)["perplexity"]["data"]["pruned"]["ppl"]
    assert got == pytest.approx(report["perplexity"]["eval"]["pruned"]["ppl"], rel=1e-5)


@pytest.mark.parametrize("case,code", [("no-artifact", "P0404"), ("no-data", "P0302"),
                                       ("too-long", "P0403"), ("npy-too-long", "P0403"),
                                       ("too-short-text", "P0402")])
def test_run_bad_input_is_a_diagnostic(gated_build: Any, tmp_path: Path, case: str, code: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`prunec run` on bad input: exit 1 and a P-code, never an internal error."""
    import numpy as np

    from prunec.runtime.cli import main

    _, out, _ = gated_build
    max_len = json.loads((out / "model.gating.json").read_text())["max_len"]
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, max_len + 1), dtype=np.int64))
    text = tmp_path / "short.txt"
    text.write_text("In the beginning")
    argv = {"no-artifact": [str(tmp_path / "nothing"), "--data", str(ids)],
            "no-data": [str(out), "--data", str(tmp_path / "missing.npy")],
            "too-long": [str(out), "--data", str(buildkit.KJV_EVAL), "--seq-len",
                         str(max_len + 1)],
            "npy-too-long": [str(out), "--data", str(ids)],
            "too-short-text": [str(out), "--data", str(text), "--seq-len", str(max_len)]}[case]
    assert main(["run", *argv]) == 1
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and "internal error" not in err


def test_run_and_eval_read_data_through_one_loader(gated_build: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`prunec run --data` and `prunec eval ARTIFACT --data` read the same sequences."""
    from prunec.runtime.cli import main

    _, out, _ = gated_build
    data = ["--data", str(buildkit.KJV_EVAL), "--samples", "4", "--seq-len", "32",
            "--slice", "0.2:0.9", "--seed", "3"]
    assert main(["eval", str(out), *data, "--json", "-q"]) == 0
    got = json.loads(capsys.readouterr().out)["perplexity"]["data"]["pruned"]
    assert main(["run", str(out), *data, "--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"perplexity {got['ppl']:.4f} on 4 sequences x 32 tokens" in printed


PROBE_SPEC = """\
name = "tiny-probe"
model hf "model"

dataset calib text "calib.txt" {
  samples = 4
  seq_len = 32
}

dataset heldout text "eval.txt" {
  samples = 4
  seq_len = 32
}

probe {
  ratio = 40%
  targets = [mlp, heads]
  skip = [layers[0]]
  history = calib
  round = 16
}

evaluate = [heldout]
"""


@pytest.fixture()
def probe_workspace(tiny_dir: Path, tmp_path: Path) -> Path:
    """A probe spec with no `export onnx` block, on the tiny model."""
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "model")
    shutil.copy(buildkit.KJV_EVAL, tmp_path / "eval.txt")
    shutil.copy(buildkit.KJV_CALIB, tmp_path / "calib.txt")
    (tmp_path / "probe.prune").write_text(PROBE_SPEC)
    return tmp_path


def test_probe_spec_without_export_builds_a_gated_artifact(probe_workspace: Path) -> None:
    """Lowering adds the implicit `export onnx` (gating on for a probe spec); the build
    obeys it: a gated artifact, with the default max_len."""
    from prunec.compiler.ir import DEFAULT_MAX_LEN
    from prunec.runtime.cli import main

    out = probe_workspace / "art"
    assert main(["build", str(probe_workspace / "probe.prune"), "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "model.gating.json").read_text())
    assert manifest["max_len"] == DEFAULT_MAX_LEN
    assert (out / "model.history.npz").is_file()


def test_every_gated_export_is_checked_for_static_gating(
        probe_workspace: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`check_static_gating` runs on the build's gated export: a graph it rejects (here:
    TopK declared forbidden) is an internal error naming the problem, nothing published."""
    from prunec.runtime import gated
    from prunec.runtime.cli import main

    monkeypatch.setattr(gated, "FORBIDDEN_OPS", frozenset({"TopK"}))
    out = probe_workspace / "art"
    assert main(["build", str(probe_workspace / "probe.prune"), "-o", str(out), "-q"]) == 3
    err = capsys.readouterr().err
    assert "internal error: GatingGraphError" in err and "forbidden op TopK" in err
    assert not out.exists()
