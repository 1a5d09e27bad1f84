"""Sliding windows and causality: ``prunec check`` (config.json alone) and the build (the
loaded transformers modules) agree, on tiny random models of each family built from the
same hand-written config.json.

Three independent readings of each config must match: ``compiler.shape.layer_windows`` (what
check reads), the attention modules' own windows (what ``passes.probe.forward`` reads), and
the logits, which stay those of the window-free model exactly when check says that no window
is narrower than the sequence. One rule (``compiler.families.window_problem``) then decides
P0226 and the gated forward's guard alike. A config transformers cannot run (a sliding layer
without a window) and Gemma's ``use_bidirectional_attention`` are P0303 for check and the
loader, never a crash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError

from prunec.compiler.diagnostics import CompileError, Span
from prunec.compiler.families import window_problem
from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.compiler.shape import ShapeProblem, attention_window, layer_windows
from prunec.passes.probe.forward import _check_supported
from prunec.runtime.cli import main
from prunec.runtime.models import load_model

T = 12  # tokens per sequence: windows of 4 matter, windows of 4096 do not
SIZES = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
         "vocab_size": 64, "max_position_embeddings": 64, "pad_token_id": 0,
         "bos_token_id": 1, "eos_token_id": 2}
SLIDE, FULL = "sliding_attention", "full_attention"
CASES: list[tuple[str, dict[str, Any], tuple[int | None, ...]]] = [
    ("llama", {"sliding_window": 4}, (None,) * 4),
    ("mistral", {"sliding_window": 4}, (4,) * 4),
    ("mistral", {"sliding_window": None}, (None,) * 4),
    ("mistral", {}, (4096,) * 4),  # MistralConfig's default window
    ("mistral", {"sliding_window": 4, "layer_types": [FULL] * 4}, (4,) * 4),  # ignored
    ("phi3", {"sliding_window": 4}, (4,) * 4),
    ("phi3", {}, (None,) * 4),
    ("qwen2", {"sliding_window": 4, "use_sliding_window": False}, (None,) * 4),
    ("qwen2", {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 2},
     (None, None, 4, 4)),
    ("qwen2", {"sliding_window": 4, "use_sliding_window": True}, (None,) * 4),  # from 28 on
    ("qwen2", {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 0,
               "layer_types": [FULL, SLIDE, FULL, FULL]}, (None, 4, None, None)),
    ("qwen3", {"sliding_window": 4, "use_sliding_window": False}, (None,) * 4),
    ("qwen3", {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 3},
     (None, None, None, 4)),
    ("gemma2", {"sliding_window": 4}, (4, None, 4, None)),
    ("gemma2", {"sliding_window": 4, "layer_types": [FULL] * 4}, (None,) * 4),
    ("gemma3_text", {"sliding_window": 4}, (4,) * 4),  # pattern 6: layer 5 is the first full
    ("gemma3_text", {"sliding_window": 4, "sliding_window_pattern": 2}, (4, None, 4, None)),
    ("gemma3_text", {"sliding_window": 4, "sliding_window_pattern": 1}, (None,) * 4),
    ("gemma3_text", {"sliding_window": 4, "layer_types": [FULL, FULL, FULL, SLIDE]},
     (None, None, None, 4)),
]


def config_json(family: str, extras: dict[str, Any]) -> dict[str, Any]:
    return {"model_type": family, **SIZES, **extras}


def hf_model(config: dict[str, Any]) -> Any:
    """A random model of ``config`` (as transformers reads that config.json)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"],
                                                                  **kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def module_windows(model: Any) -> tuple[int | None, ...]:
    """Each layer's window as the gated forward's guard reads it (the module's, else the
    config's)."""
    return tuple(getattr(layer.self_attn, "sliding_window",
                         getattr(model.config, "sliding_window", None))
                 for layer in model.model.layers)


def window_free(model: Any, config: dict[str, Any]) -> Any:
    """The same weights with every window widened past any sequence."""
    wide = hf_model({**config, "sliding_window": 10**6} if config.get(
        "sliding_window", 0) is not None else config)
    wide.load_state_dict(model.state_dict())
    return wide


def logits(model: Any) -> torch.Tensor:
    ids = (torch.arange(2 * T).reshape(2, T) * 7) % SIZES["vocab_size"]
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids, use_cache=False).logits
    return out


@pytest.mark.parametrize(("family", "extras", "windows"), CASES)
def test_check_reads_the_windows_transformers_applies(
        family: str, extras: dict[str, Any], windows: tuple[int | None, ...]) -> None:
    config = config_json(family, extras)
    assert layer_windows(family, config, "config.json") == windows
    model = hf_model(config)
    if family != "llama":  # Llama's modules have no window (its config's is never read)
        assert module_windows(model) == windows
    narrowest = attention_window(family, config, "config.json")
    changed = not torch.equal(logits(model), logits(window_free(model, config)))
    assert changed == (narrowest is not None and narrowest < T)


@pytest.mark.parametrize(("family", "extras", "windows"), CASES)
@pytest.mark.parametrize("max_len", [4, T])
def test_check_and_the_gated_forward_apply_one_rule(
        family: str, extras: dict[str, Any], windows: tuple[int | None, ...],
        max_len: int) -> None:
    config = config_json(family, extras)
    problem = window_problem((attention_window(family, config, "config.json"),), max_len)
    assert problem == window_problem(windows, max_len)
    if problem is None:
        _check_supported(hf_model(config), max_len)
        return
    with pytest.raises(ValueError, match="sliding window of 4 tokens"):
        _check_supported(hf_model(config), max_len)


@pytest.mark.parametrize(("family", "extras", "message"), [
    ("qwen2", {"sliding_window": 4, "use_sliding_window": False,
               "layer_types": [SLIDE] * 4}, "sliding_window is switched off"),
    ("gemma2", {"sliding_window": None}, "sliding_window is null"),
    ("gemma3_text", {"sliding_window": None, "layer_types": [FULL] * 4},
     "sliding_window is null"),
    ("gemma2", {"layer_types": [SLIDE] * 3}, "layer_types must name"),
])
def test_a_config_transformers_cannot_run_is_p0303(family: str, extras: dict[str, Any],
                                                   message: str) -> None:
    config = config_json(family, extras)
    with pytest.raises(ShapeProblem) as info:
        layer_windows(family, config, "config.json")
    assert info.value.code == "P0303" and message in info.value.message
    with pytest.raises((ValueError, StrictDataclassError)):  # no config, or no mask
        logits(hf_model(config))


def test_max_window_layers_must_be_a_count() -> None:
    config = config_json("qwen2", {"max_window_layers": None})
    with pytest.raises(ShapeProblem, match="max_window_layers"):
        layer_windows("qwen2", config, "config.json")
    with pytest.raises(StrictDataclassError):  # transformers' config class refuses it too
        hf_model(config)


# ------------------------------------------------------------- bidirectional attention


BIDIRECTIONAL = {"sliding_window": 4, "use_bidirectional_attention": True}
SPEC = """model hf "m"
dataset calib text "kjv-calib.txt" { samples = 2, seq_len = 16 }
prune magnitude {
  target = 10%
  score = calib
}
export onnx "model.onnx"
"""


def test_bidirectional_attention_is_real() -> None:
    """The flag makes Gemma 3 attend to later tokens (so no causal export can match it), and
    the gated forward's guard refuses it."""
    model = hf_model(config_json("gemma3_text", BIDIRECTIONAL))
    ids = (torch.arange(T).unsqueeze(0) * 7) % SIZES["vocab_size"]
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits[:, : T // 2]
        prefix = model(input_ids=ids[:, : T // 2], use_cache=False).logits
    assert (whole - prefix).abs().max() > 1e-3, "later tokens change earlier logits"
    with pytest.raises(ValueError, match="not causal"):
        _check_supported(model, T)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_check_and_build_reject_bidirectional_attention(
        family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinymodels import FAMILY_CLASSES

    config = config_json(family, BIDIRECTIONAL)
    hf_model(config).save_pretrained(tmp_path / "m")  # weights too: the loader's own check
    on_disk = json.loads((tmp_path / "m" / "config.json").read_text())
    assert on_disk["use_bidirectional_attention"] is True
    assert on_disk["architectures"] == [FAMILY_CLASSES[family][1]]
    shutil.copy(Path(__file__).parents[3] / "specs" / "data" / "kjv-calib.txt", tmp_path)
    spec = tmp_path / "s.prune"
    spec.write_text(SPEC)
    for command in (["check", str(spec)], ["build", str(spec), "-o", str(tmp_path / "o")]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert f"{spec}:1:1: error[P0303]" in err and "use_bidirectional_attention" in err
        assert "Traceback" not in err
    with pytest.raises(CompileError) as exc:  # the loader, as a build after check runs it
        load_model(ModelDecl(ModelSource.HF_DIR, "m", DType.FLOAT32,
                             Span(str(spec), 1, 1, 1, 2)), tmp_path)
    assert exc.value.diagnostics[0].code == "P0303"
