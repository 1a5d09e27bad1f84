"""onnxruntime-genai's files in the artifact: ``genai_config.json`` beside the cached ONNX graph,
so that ``onnxruntime_genai.Model(ARTIFACT_DIR)`` generates from a prunec artifact.

onnxruntime-genai (PyPI ``onnxruntime-genai``, studied on 0.18) runs a decoder-only ONNX model
from a directory holding the model, the tokenizer (``tokenizer.json`` and
``tokenizer_config.json``, already in every artifact) and ``genai_config.json``:
``model {type, vocab_size, context_length, bos/eos/pad ids, decoder {filename, head_size,
hidden_size, num_attention_heads, num_hidden_layers, num_key_value_heads, inputs, outputs}}``
and ``search {max_length, do_sample, num_beams, past_present_share_buffer, ...}``. How that
maps onto prunec's cache convention (``runtime.export``, described by ``model.kv.json``):
- the input/output names are templates (``past_key_values.%d.key``, ``present.%d.key``, ...);
  ``position_ids`` is fed because the graph has that input;
- ``past_present_share_buffer`` is false: prunec's graph concatenates past and new keys into
  a present of length past+seq, so genai allocates each step's presents and feeds them back
  as the next step's past (its ``DefaultKeyValueCache``). A shared buffer would need a graph
  that writes into a max-length past in place (GroupQueryAttention's convention);
- missing layers: genai finds the layers that have a cache by matching the inputs' names
  against the template and sorting the indices, so layers whose attention the plan removed
  simply have no inputs (``num_hidden_layers`` stays the original count);
- per-layer KV heads: genai reads each layer's KV head count and head_dim from the static
  dims 1 and 3 of its ``past_key_values.{i}.key`` input (``num_key_value_heads`` and
  ``head_size`` are only the fallback for symbolic dims), and the export declares them static,
  so plans that drop KV groups unevenly run too;
- ``type`` is ``"decoder"``, genai's generic decoder-only LLM: rotary embeddings, norms and
  attention are all inside prunec's graph, nothing model-specific is left to the runtime.
So every static plan gets a config. None is written when the graph has no KV cache
(``export onnx { kv_cache = off }``, or a gated graph, whose history inputs genai would not
feed; a ``mode = prompt`` artifact has a cache but three graphs to chain, which genai's
decoder does not); ``report.json``'s ``genai`` says which: ``{"written": true, "file": ...}`` or
``{"written": false, "reason": ...}``.

Optimum's ``ORTModelForCausalLM`` reads the same names but is not reachable here: its ONNX
Runtime classes live in ``optimum-onnx`` (0.1.0), which requires transformers < 4.58 and fails
to import with the transformers 5 that prunec uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunec.compiler.ir import ModelShape
from prunec.compiler.names import GENAI_CONFIG
from prunec.runtime.generate import KvManifest, kv_manifest_path, read_kv_manifest
from prunec.runtime.jsonio import write_json

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask",
          "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
          "past_value_names": "past_key_values.%d.value"}
OUTPUTS = {"logits": "logits", "present_key_names": "present.%d.key",
           "present_value_names": "present.%d.value"}


def genai_config(kv: KvManifest, shape: ModelShape, onnx_file: str,
                 bos: int | None) -> dict[str, Any]:
    """``genai_config.json`` of a cached graph (see the module docstring)."""
    decoder = {"filename": onnx_file, "head_size": kv.head_dim, "hidden_size": shape.hidden,
               "num_attention_heads": shape.n_heads, "num_hidden_layers": shape.n_layers,
               "num_key_value_heads": max(kv.kv_heads, default=shape.n_kv_heads),
               "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
               "inputs": INPUTS, "outputs": OUTPUTS}
    model = {"type": "decoder", "vocab_size": shape.vocab, "context_length": kv.context,
             "bos_token_id": kv.pad if bos is None else bos, "eos_token_id": list(kv.eos),
             "pad_token_id": kv.pad, "decoder": decoder}
    search = {"max_length": kv.context, "min_length": 0, "do_sample": False, "num_beams": 1,
              "num_return_sequences": 1, "past_present_share_buffer": False,
              "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
    return {"model": model, "search": search}


def write_genai_config(onnx_path: Path, shape: ModelShape, bos: int | None) -> dict[str, Any]:
    """Write ``genai_config.json`` beside ``onnx_path`` when that graph has a KV cache (a
    ``model.kv.json``); returns report.json's ``genai`` entry either way."""
    if onnx_path.with_suffix(".gating.json").is_file():
        return {"written": False,
                "reason": "a probe-gated artifact (mode = prompt: prefill, gather and decode "
                          "graphs) is not a genai decoder"}
    if not kv_manifest_path(onnx_path).is_file():
        return {"written": False,
                "reason": "the graph has no KV cache (export onnx { kv_cache = off }, or a "
                          "gated graph): onnxruntime-genai decodes with past_key_values.* inputs"}
    kv = read_kv_manifest(onnx_path)
    write_json(onnx_path.parent / GENAI_CONFIG, genai_config(kv, shape, onnx_path.name, bos))
    return {"written": True, "file": GENAI_CONFIG, "layers_with_cache": list(kv.layers)}
