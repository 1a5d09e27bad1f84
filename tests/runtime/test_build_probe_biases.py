"""`prunec build` of a probe spec on a Llama with ``attention_bias`` (q/k/v and o_proj biases).

It used to end in exit 3 (the gated path refused biases); the gated model's exactness on
biased models is tested against HF's modules in tests/passes/probe/test_probe_biases.py. Here: the
whole command exits 0, writes the gated artifact, and its biases are in the ONNX graph.
"""

from __future__ import annotations

from pathlib import Path

import buildkit
import onnx
import pytest
import torch
from onnx import numpy_helper
from tinymodels import TinyConfig, tiny_llama

from prunec.runtime.cli import main

SPEC = """name = "biased"
model hf "model"
dataset calib text "{calib}" {{ samples = 4, seq_len = 32 }}
dataset heldout text "{held}" {{ samples = 4, seq_len = 32 }}
probe {{
  ratio = 40%
  skip = [layers[0]]
  history = calib
  round = 16
}}
evaluate = [heldout]
export onnx "model.onnx" {{ providers = [cpu] }}
"""


@pytest.fixture(scope="module")
def biased_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("biased")
    model = tiny_llama(7, TinyConfig(attention_bias=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.3)
    model.save_pretrained(root / "model")
    buildkit.tiny_tokenizer().save_pretrained(str(root / "model"))
    (root / "biased.prune").write_text(SPEC.format(calib=buildkit.KJV_CALIB,
                                                   held=buildkit.KJV_EVAL))
    return root


def test_probe_build_on_attention_bias_llama(biased_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = biased_dir / "out"
    assert main(["build", str(biased_dir / "biased.prune"), "-o", str(out), "-q"]) == 0
    assert "internal error" not in capsys.readouterr().err
    assert {"model.onnx", "model.gating.json", "model.history.npz"} <= {
        p.name for p in out.iterdir()}
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(biased_dir / "model"))
    graph = onnx.load(str(out / "model.onnx"))
    consts = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    for name in ("self_attn.k_proj.bias", "self_attn.o_proj.bias"):
        bias = hf.get_parameter(f"model.layers.1.{name}").detach().numpy()
        assert any(c.shape == bias.shape and (c == bias).all() for c in consts), name
