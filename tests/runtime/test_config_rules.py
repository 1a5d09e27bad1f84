"""One home for what a usable config.json is: ``prunec check`` (compiler.shape) and the model
loader (runtime.models) reject the same nonsense with the same P0303, exit 1, never exit 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.runtime.cli import main
from prunec.runtime.models import load_model

DROP = object()  # remove the key from the config

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "float hidden": ({"hidden_size": 96.5}, "hidden_size must be a positive integer, not 96.5"),
    "zero heads": ({"num_attention_heads": 0, "num_key_value_heads": 0},
                   "num_attention_heads must be a positive integer, not 0"),
    "zero kv heads": ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive"),
    "negative layers": ({"num_hidden_layers": -2}, "num_hidden_layers must be a positive"),
    "bool vocab": ({"vocab_size": True}, "vocab_size must be a positive integer, not true"),
    "string size": ({"intermediate_size": "128"},
                    'intermediate_size must be a positive integer, not "128"'),
    "missing size": ({"intermediate_size": DROP}, "intermediate_size is missing"),
    "ungrouped heads": ({"num_key_value_heads": 4}, "6 attention heads cannot be grouped over 4"),
    "head_dim mismatch": ({"hidden_size": 100, "head_dim": DROP},
                          "hidden size 100 is not divisible by 6 attention heads"),
    "zero head_dim": ({"head_dim": 0}, "head_dim must be a positive integer, not 0"),
    "odd head_dim": ({"hidden_size": 66, "head_dim": DROP}, "head size 11 is odd"),
    "string bool": ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    "gpt_neox": ({"model_type": "gpt_neox"}, 'model_type "gpt_neox" is not supported'),
    "not a causal lm": ({"architectures": ["LlamaForSequenceClassification"]},
                        "not a causal language model"),
}


def patched(config: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = {**config, **{k: v for k, v in change.items() if v is not DROP}}
    return {k: v for k, v in out.items() if change.get(k, None) is not DROP}


def write_config(directory: Path, change: dict[str, Any]) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(patched(json.loads(path.read_text()), change)))


@pytest.fixture()
def model_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    """A spec directory holding a copy of the tiny model (weights included) and a spec."""
    shutil.copytree(tiny_dir, tmp_path / "model")
    (tmp_path / "t.prune").write_text('name = "t"\nmodel hf "model"\n')
    return tmp_path


def test_the_tiny_model_is_accepted(model_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(model_copy / "t.prune")]) == 0
    assert capsys.readouterr().err.endswith("t.prune: ok\n")


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_and_build_reject_the_config(case: str, model_copy: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    change, message = BAD[case]
    write_config(model_copy / "model", change)
    spec = str(model_copy / "t.prune")
    for argv in (["check", spec], ["build", spec, "-o", str(model_copy / "out"), "-q"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "error[P0303]" in err and message in err and "t.prune:2:1" in err, err
        assert "internal error" not in err
    assert not (model_copy / "out").exists()


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_loader_rejects_the_config_before_reading_weights(case: str,
                                                               model_copy: Path) -> None:
    change, message = BAD[case]
    write_config(model_copy / "model", change)
    decl = ModelDecl(ModelSource.HF_DIR, "model", DType.FLOAT32, buildkit.span(2))
    with pytest.raises(CompileError) as exc:
        load_model(decl, model_copy)
    found = exc.value.diagnostics[0]
    assert found.code == "P0303" and message in found.message and found.span.line == 2
