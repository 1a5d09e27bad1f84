"""A build with a probe policy: static plan + gated ONNX (H shipped, carried at eval time)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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


def probe_spec(tiny_dir: Path) -> object:
    skip = (LayerSelector(SelectorKind.INDEX, 0, None, buildkit.SPAN),)
    policy = ProbePolicy(0.4, (ProbeTarget.MLP, ProbeTarget.HEADS), skip, ProbeMode.PROBE,
                         0.5, 0.25, 0.99, "calib", ProbeMetric.PPSP, 16, buildkit.span(50))
    datasets = (buildkit.dataset("eval", buildkit.KJV_EVAL, samples=4, seq_len=32),
                buildkit.dataset("calib", buildkit.KJV_CALIB, samples=4, seq_len=32))
    spec = buildkit.make_spec(tiny_dir, plan=buildkit.manual_plan(), datasets=datasets)
    export = OnnxExport("model.onnx", 18, True, (Provider.CPU,), buildkit.span(20))
    return dataclasses.replace(spec, probe=policy, exports=(export,))


def test_probe_build(tiny_dir: Path, tmp_path: Path) -> None:
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import perplexity
    from prunec.runtime.gated import GatedSession
    from prunec.runtime.models import load_model

    spec = probe_spec(tiny_dir)
    out = tmp_path / "gated"
    result = build(spec, Path.cwd(), BuildOptions(out, quiet=True))  # type: ignore[arg-type]
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
    assert json.loads((out / "model.gating.json").read_text())["keep"]
