"""GGUF files of every family transformers reads from GGUF (Llama, Qwen3, Phi-3, Gemma 2,
Gemma 3 as ``gemma3_text``), made from tiny random HF models by ``tests/gguf_writer.py``:
prunec's loader (``runtime.models.load_model``, what a build uses) gives the HF model's logits,
the shape ``prunec check`` reads from the header is the loaded model's, and a static spec on
the file checks (and, marked slow, builds). A file transformers would load as a different model (a Qwen3
head size other than 128, a Gemma query scale other than 1/sqrt(256), Gemma 2 soft-capping
other than 50/30, Phi-3 partial rotary, rotary scaling) is P0303 from the header alone, and
each such rule is shown to be real: transformers' own load of that file differs.

The tiny models keep what a GGUF can say: Qwen3 head_dim 128, Gemma head_dim 256 with the
default query scale and the default sliding-window pattern, Phi-3 full rotary.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import buildkit
import pytest
import torch
from gguf_writer import write_gguf
from tinymodels import TinyConfig, tiny_model

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.driver import check_source
from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.compiler.shape import ShapeProblem, from_gguf, shape_from_gguf_meta
from prunec.runtime.cli import main
from prunec.runtime.models import load_model

GEMMA = {"sliding_window": 4, "query_pre_attn_scalar": 256}
# family -> (sizes, config extras) a GGUF file carries faithfully
FAITHFUL: dict[str, tuple[TinyConfig, dict[str, Any] | None]] = {
    "llama": (TinyConfig(layers=3, heads=4, kv_heads=2, head_dim=16), None),
    "qwen3": (TinyConfig(layers=3, hidden=64, heads=4, kv_heads=2, head_dim=128), {}),
    "phi3": (TinyConfig(layers=3, hidden=64, heads=4, kv_heads=2, head_dim=16), {}),
    "gemma2": (TinyConfig(layers=3, hidden=64, heads=2, kv_heads=1, head_dim=256), GEMMA),
    "gemma3_text": (TinyConfig(layers=6, hidden=64, heads=2, kv_heads=1, head_dim=256), GEMMA),
}
SPEC = """name = "gguf"
model gguf "tiny.gguf"
dataset calib text "kjv-calib.txt" { samples = 4, seq_len = 32, slice = 0% .. 50% }
dataset heldout text "kjv-calib.txt" { samples = 4, seq_len = 32, slice = 50% .. 100% }
prune magnitude {
  target = 10%
  score = calib
}
evaluate = [heldout]
gates {
  perplexity(heldout) <= 100x dense
}
export onnx "model.onnx"
"""


@dataclass(frozen=True)
class Written:
    family: str
    model: Any  # the HF model the file was written from
    path: Path


def written_gguf(family: str, directory: Path, sizes: TinyConfig,
                 extras: dict[str, Any] | None, extra: dict[str, str | float] | None = None
                 ) -> Written:
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_model(family, seed=1, config=sizes, extras=extras)
    path = write_gguf(model, buildkit.tiny_tokenizer(), directory / "tiny.gguf", extra)
    return Written(family, model, path)


@pytest.fixture(scope="module", params=sorted(FAITHFUL))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Written:
    family = str(request.param)
    return written_gguf(family, tmp_path_factory.mktemp(family), *FAITHFUL[family])


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path / "cache"))


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids, use_cache=False).logits
    return out


def gguf_decl(path: Path) -> ModelDecl:
    return ModelDecl(ModelSource.GGUF, path.name, DType.FLOAT32, buildkit.span(2))


def test_loader_gives_the_hf_models_logits(written: Written) -> None:
    loaded = load_model(gguf_decl(written.path), written.path.parent)
    ids = torch.randint(0, 160, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(loaded.model, ids), logits(written.model, ids),
                               rtol=0, atol=1e-4)
    assert loaded.shape.architecture == written.family  # gemma3 is loaded as gemma3_text
    assert from_gguf(written.path) == loaded.shape, "check's shape is the loaded model's"


def spec_beside(written: Written) -> Path:
    spec = written.path.parent / "gguf.prune"
    spec.write_text(SPEC)
    shutil.copy(buildkit.KJV_CALIB, written.path.parent / "kjv-calib.txt")
    return spec


def test_check_accepts_the_static_spec(written: Written) -> None:
    spec = spec_beside(written)
    assert check_source(spec.read_text(), str(spec))[1] == []


@pytest.mark.slow  # 20-40 s a family on a shared CPU
@pytest.mark.parametrize("family", sorted(FAITHFUL))
def test_static_spec_on_the_gguf_checks_and_builds(
        family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_beside(written_gguf(family, tmp_path / "spec", *FAITHFUL[family]))
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] and report["params"]["pruned"] < report["params"]["dense"]


def transformers_logits(path: Path, ids: torch.Tensor) -> torch.Tensor | str:
    """The logits of transformers' own load of ``path``, or why it failed."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    except (RuntimeError, ValueError, AssertionError) as exc:
        return type(exc).__name__
    return logits(model.eval(), ids)


MISREAD = [  # (family, sizes, extras, extra metadata, what the diagnostic names)
    ("qwen3", TinyConfig(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16), {}, None,
     "qwen3.attention.key_length is 16"),
    ("gemma2", TinyConfig(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16),
     {"query_pre_attn_scalar": 16}, None, "gemma2.attention.key_length is 16"),
    ("gemma2", FAITHFUL["gemma2"][0], GEMMA | {"attn_logit_softcapping": 0.125}, None,
     "gemma2.attn_logit_softcapping is 0.125"),
    ("gemma3_text", TinyConfig(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16),
     {"query_pre_attn_scalar": 16}, None, "gemma3.attention.key_length is 16"),
    ("gemma3_text", FAITHFUL["gemma3_text"][0],
     GEMMA | {"rope_parameters": {
         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     {"gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0},
     'gemma3.rope.scaling.type is "linear"'),
    ("phi3", FAITHFUL["phi3"][0], {"partial_rotary_factor": 0.5}, None,
     "phi3.rope.dimension_count is 8 of 16"),
]


@pytest.mark.parametrize(("family", "sizes", "extras", "extra", "names"), MISREAD)
def test_a_gguf_transformers_misreads_is_a_check_error(
        family: str, sizes: TinyConfig, extras: dict[str, Any], extra: dict[str, str | float],
        names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = written_gguf(family, tmp_path / "m", sizes, extras, extra)
    ids = torch.randint(0, 160, (1, 12), generator=torch.Generator().manual_seed(0))
    theirs = transformers_logits(made.path, ids)
    assert isinstance(theirs, str) or (theirs - logits(made.model, ids)).abs().max() > 1e-2, (
        "the rule is real: transformers loads a different model from this file")
    spec = made.path.parent / "s.prune"
    spec.write_text('model gguf "tiny.gguf"\n')
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:1:1: error[P0303]" in err and names in err and "Traceback" not in err
    with pytest.raises(CompileError) as exc:  # the loader applies the same rule
        load_model(gguf_decl(made.path), made.path.parent)
    assert exc.value.diagnostics[0].code == "P0303" and names in exc.value.diagnostics[0].message


def _phi3_meta(**change: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "general.architecture": "phi3", "phi3.block_count": 2, "phi3.embedding_length": 64,
        "phi3.feed_forward_length": 128, "phi3.attention.head_count": 4,
        "phi3.attention.head_count_kv": 4, "phi3.rope.dimension_count": 16,
        "tokenizer.ggml.padding_token_id": 0}
    return {**meta, **change}


@pytest.mark.parametrize(("change", "names", "message"), [
    ({}, {"blk.0.rope_freqs.weight"}, None),  # a name that merely ends like one is fine
    ({}, {"rope_factors_long.weight"}, "tensor rope_factors_long.weight"),
    ({}, {"rope_freqs.weight"}, "tensor rope_freqs.weight"),
    ({"tokenizer.ggml.padding_token_id": None}, set(), "names no padding token"),
    ({"phi3.rope.scaling.type": "none"}, set(), None),
    ({"phi3.rope.scaling.type": "longrope"}, set(), 'rope.scaling.type is "longrope"'),
    ({"phi3.attention.causal": True}, set(), None),
    ({"phi3.attention.causal": False}, set(), "phi3.attention.causal is false"),
])
def test_gguf_header_rules(change: dict[str, object], names: set[str],
                           message: str | None) -> None:
    meta = {k: v for k, v in _phi3_meta(**change).items() if v is not None}
    if message is None:
        assert shape_from_gguf_meta(meta, 256, names, "x.gguf").architecture == "phi3"
        return
    with pytest.raises(ShapeProblem) as info:
        shape_from_gguf_meta(meta, 256, names, "x.gguf")
    assert info.value.code == "P0303" and message in info.value.message
    assert info.value.hint and 'model hf "dir"' in info.value.hint


def test_bidirectional_gguf_files_are_check_errors() -> None:
    """llama.cpp marks non-causal attention with ``{arch}.attention.causal = false`` and
    writes EmbeddingGemma as ``gemma-embedding``; transformers' GGUF reader knows neither (it
    would load a causal decoder), so both are P0303 from the header alone."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    assert all("attention.causal" not in keys for keys in GGUF_CONFIG_MAPPING.values())
    meta = {k.replace("phi3", "gemma3"): v for k, v in _phi3_meta().items()}
    meta["general.architecture"] = "gemma3"
    with pytest.raises(ShapeProblem, match="gemma3.attention.causal is false"):
        shape_from_gguf_meta({**meta, "gemma3.attention.key_length": 256,
                              "gemma3.attention.causal": False}, 256, set(), "x.gguf")
    embedding = {k.replace("gemma3", "gemma-embedding"): v for k, v in meta.items()}
    embedding["general.architecture"] = "gemma-embedding"
    with pytest.raises(ShapeProblem, match='architecture "gemma-embedding" is not supported'):
        shape_from_gguf_meta(embedding, 256, set(), "x.gguf")


def test_a_llama_gguf_named_mistral_is_a_check_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """llama.cpp writes Mistral checkpoints as ``llama`` files (no sliding window: its Llama
    has none), which transformers loads as Llama, prunec's reading too; but a file whose
    ``general.name`` is exactly "mistral" transformers loads as model_type mistral, which
    its gguf-py mapping lacks (and whose MistralConfig would add a 4096-token window)."""
    import gguf

    add_name = gguf.GGUFWriter.add_name
    monkeypatch.setattr(gguf.GGUFWriter, "add_name",
                        lambda self, name: add_name(self, "mistral"))
    made = written_gguf("llama", tmp_path / "m", *FAITHFUL["llama"])
    ids = torch.randint(0, 160, (1, 12), generator=torch.Generator().manual_seed(0))
    assert isinstance(transformers_logits(made.path, ids), str), "transformers cannot load it"
    spec = made.path.parent / "s.prune"
    spec.write_text('model gguf "tiny.gguf"\n')
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "error[P0303]" in err and 'general.name is "mistral"' in err


def test_a_build_reads_the_gguf_header_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prunec check`` and the model loader (a build runs both) share one header reading;
    a rewritten file is read again."""
    from prunec.compiler import shape

    reads: list[Path] = []
    scan = shape.scan_gguf
    monkeypatch.setattr(shape, "scan_gguf", lambda path: reads.append(path) or scan(path))
    made = written_gguf("llama", tmp_path / "m", *FAITHFUL["llama"])
    spec = spec_beside(made)
    assert check_source(spec.read_text(), str(spec))[1] == []
    load_model(gguf_decl(made.path), made.path.parent)
    assert len(reads) == 1
    written_gguf("llama", tmp_path / "m", TinyConfig(layers=2, heads=4, kv_heads=2,
                                                     head_dim=16), None)
    assert from_gguf(made.path).n_layers == 2 and len(reads) == 2
