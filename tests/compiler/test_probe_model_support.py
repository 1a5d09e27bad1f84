"""P0226: what the gated forward cannot express is a ``prunec check`` error decided from
config.json (a sliding window narrower than ``max_len``; the families and activations
either mode accepts: ``tests/passes/families/test_family_probe.py``), not a build that ends
in an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunec.compiler.driver import check_source

BASE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256}
BODY = ('dataset c text "t.txt" { samples = 2, seq_len = 32 }\n'
        "prune magnitude { target = 10%\n score = c }\nprobe { ratio = 20% }\n")


def _codes(tmp_path: Path, config: dict[str, object], export: str = "") -> list[str]:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "t.txt").write_text("in the beginning " * 100)
    text = 'model hf "m"\n' + BODY + export
    _, diags = check_source(text, str(tmp_path / "s.prune"))
    return [d.code for d in diags]


@pytest.mark.parametrize("config,export,codes", [
    ({}, "", []),
    ({"hidden_act": "gelu"}, "", []),  # the gated MLP runs the module's own act_fn
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
      "sliding_window": 64}, "", ["P0226"]),  # default max_len 512 > 64
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
      "sliding_window": 64}, 'export onnx "m.onnx" { gating = on, max_len = 64 }\n', []),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
      "sliding_window": None}, "", []),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
      "sliding_window": 64, "use_sliding_window": False}, "", []),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
      "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 1}, "",
     ["P0226"]),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
      "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 6}, "", []),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
      "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 0}, "",
     ["P0226"]),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 64,
      "layer_types": ["full_attention"] * 6}, "", ["P0226"]),  # Mistral ignores layer_types
    ({"hidden_act": 3}, "", ["P0303"]),
])
def test_probe_model_support(tmp_path: Path, config: dict[str, object], export: str,
                             codes: list[str]) -> None:
    assert _codes(tmp_path, {**BASE, **config}, export) == codes


def test_static_specs_do_not_care(tmp_path: Path) -> None:
    config = {**BASE, "hidden_act": "gelu"}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "t.txt").write_text("in the beginning " * 100)
    text = 'model hf "m"\n' + BODY.replace("probe { ratio = 20% }\n", "")
    _, diags = check_source(text, str(tmp_path / "s.prune"))
    assert [d.code for d in diags] == []
