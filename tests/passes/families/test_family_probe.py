"""Probe specs on the families beyond Llama (Qwen3, Phi-3, Gemma 3 text), through the CLI on
tiny random model directories: a per-batch probe spec ``prunec check`` accepts builds a gated
artifact that runs (no false accepts; prompt mode: ``test_family_prompt.py``), and check
rejects, from config.json alone, what the build cannot do: a sliding window narrower than
``max_len``, rotary scaling that changes below it (Phi-3's longrope), and a family whose
support-table row says no (P0226). Gelu-tanh Gemma MLPs and a GELU Qwen2 are no reason to
reject a probe in either mode (the gated MLP runs the module's own ``act_fn``).

The model directories are built here (no weights committed) from each family's own
transformers config class, with 64-token sliding windows (``tinymodels.FAMILY_EXTRAS``
uses 4, which is narrower than any useful ``max_len``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tinymodels import FAMILY_EXTRAS, TinyConfig, tiny_model

from prunec.compiler import checks
from prunec.compiler.driver import check_source
from prunec.compiler.families import family, rope_fixed_len
from prunec.runtime.cli import main

KJV = Path(__file__).resolve().parents[3] / "specs" / "data" / "kjv-calib.txt"
MAX_LEN = 48
SPEC = """name = "tiny-probe"
model hf "tiny"

dataset calib text "kjv-calib.txt" {
  samples = 4
  seq_len = 32
  slice = 0% .. 50%
}

dataset heldout text "kjv-calib.txt" {
  samples = 4
  seq_len = 32
  slice = 50% .. 100%
}

probe {
  ratio = 40%
  skip = [layers[0]]
  history = calib
  round = 8
  MODE
}

evaluate = [heldout]

gates {
  perplexity(heldout) <= 100x dense
}

export onnx "model.onnx" {
  gating = on
  max_len = MAX_LEN
}
"""


def spec_text(mode: str = "probe", max_len: int = MAX_LEN) -> str:
    return SPEC.replace("MODE", f"mode = {mode}").replace("MAX_LEN", str(max_len))


def save_model(name: str, directory: Path, window: int = 64) -> None:
    """A tiny random ``name`` model (sliding windows of ``window`` tokens) and the tiny BPE
    tokenizer, saved as an HF directory."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "runtime"))
    from buildkit import tiny_tokenizer

    extras = {**FAMILY_EXTRAS.get(name, {}), "sliding_window": window}
    config = TinyConfig(layers=3, heads=8, kv_heads=4, head_dim=8, attention_bias=True)
    tiny_model(name, seed=1, config=config, extras=extras).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(str(directory))


def _codes(tmp_path: Path, text: str) -> list[str]:
    return [d.code for d in check_source(text, str(tmp_path / "s.prune"))[1]]


def _config_dir(tmp_path: Path, config: dict[str, object]) -> None:
    (tmp_path / "tiny").mkdir(exist_ok=True)
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))
    shutil.copy(KJV, tmp_path / KJV.name)


def _default_config(name: str, **changes: object) -> dict[str, object]:
    """The family's transformers default config (as ``save_pretrained`` writes it)."""
    import transformers
    from tinymodels import FAMILY_CLASSES

    config_class, model_class = FAMILY_CLASSES[name]
    config = getattr(transformers, config_class)().to_dict()
    return {**config, "architectures": [model_class], **changes}


@pytest.mark.parametrize("name", ["qwen3", "phi3", "gemma2", "gemma3_text"])
def test_check_accepts_per_batch_and_prompt_mode(name: str, tmp_path: Path) -> None:
    _config_dir(tmp_path, _default_config(name))
    assert _codes(tmp_path, spec_text()) == []
    assert _codes(tmp_path, spec_text("prompt")) == []


def test_check_rejects_what_the_gated_forward_cannot_express(tmp_path: Path) -> None:
    _config_dir(tmp_path, _default_config("gemma3_text", sliding_window=32))
    assert _codes(tmp_path, spec_text()) == ["P0226"]  # window 32 < max_len 48
    assert _codes(tmp_path, spec_text(max_len=32)) == []
    longrope = {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}
    _config_dir(tmp_path, _default_config("phi3", rope_scaling=longrope,
                                          original_max_position_embeddings=32))
    assert _codes(tmp_path, spec_text()) == ["P0226"]  # long factors beyond 32 < max_len 48
    assert _codes(tmp_path, spec_text("prompt")) == ["P0226"]
    assert _codes(tmp_path, spec_text(max_len=32)) == []
    _config_dir(tmp_path, _default_config("qwen2", hidden_act="gelu"))
    assert _codes(tmp_path, spec_text()) == []
    assert _codes(tmp_path, spec_text("prompt")) == []


@pytest.mark.parametrize(("model_type", "config", "fixed"), [
    ("phi3", {"rope_scaling": {"type": "su"}, "original_max_position_embeddings": 4096}, 4096),
    ("phi3", {"rope_parameters": {"rope_type": "longrope",
                                  "original_max_position_embeddings": 8192}}, 8192),
    ("phi3", {"rope_scaling": {"type": "longrope"}, "rope_parameters": {"rope_type": "default"},
              "original_max_position_embeddings": 4096}, 4096),  # rope_scaling wins
    ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
               "max_position_embeddings": 2048}, 2048),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0},
               "original_max_position_embeddings": 2048}, None),  # fixed tables
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, None),
    ("qwen3", {}, None),
])
def test_rotary_scaling_that_depends_on_the_length(model_type: str, config: dict[str, object],
                                                   fixed: int | None) -> None:
    assert rope_fixed_len(model_type, config) == fixed


@pytest.mark.parametrize(("row", "codes"), [({"probe": False}, (["P0226"], ["P0226"])),
                                            ({"prompt": False}, ([], ["P0226"]))])
def test_a_row_that_says_no_is_p0226(row: dict[str, bool], codes: tuple[list[str], list[str]],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every family has probe and prompt mode today; a row without them is refused."""
    monkeypatch.setattr(checks, "family", lambda name: replace(family(name), **row))
    _config_dir(tmp_path, _default_config("qwen3"))
    assert (_codes(tmp_path, spec_text()), _codes(tmp_path, spec_text("prompt"))) == codes


@pytest.mark.parametrize("name", ["qwen3", "phi3", "gemma3_text"])
def test_probe_spec_checks_and_builds(name: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from prunec.runtime.gated import GatedSession

    spec = tmp_path / "probe.prune"
    spec.write_text(spec_text())
    shutil.copy(KJV, tmp_path / KJV.name)
    save_model(name, tmp_path / "tiny")
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and "gated" in report["compile"]
    manifest = json.loads((out / "model.gating.json").read_text())
    assert manifest["model"]["architecture"] == name and manifest["keep"]
    ids = np.arange(2 * 20).reshape(2, 20) % 160
    assert np.isfinite(GatedSession(out).run(ids)).all()
