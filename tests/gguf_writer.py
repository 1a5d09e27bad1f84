"""A tiny HF causal LM written as a float32 GGUF file, the way llama.cpp's converter would,
so tests can load it back through transformers' GGUF reader (and prunec's loader).

Test-only. ``write_gguf(model, tokenizer, path)`` writes ``general.architecture`` (the
model_type, except Gemma 3 text, which llama.cpp calls ``gemma3``), the ``{arch}.*`` sizes
transformers' ``GGUF_CONFIG_MAPPING`` reads, every tensor under its GGUF name (the inverse of
``get_gguf_hf_weights_map``: ``gguf.get_tensor_name_map``), and the inverse of each tensor
rewrite transformers undoes on load (``TENSOR_PROCESSORS``): Llama's rotary q/k row
permutation, and Gemma's norm weights stored as ``1 + w``. The tokenizer goes in as a
``gpt2`` (byte-level BPE) vocabulary with its merges: transformers builds the tokenizer of a
GGUF from these, and prunec's conversion needs one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

GGUF_ARCH = {"gemma3_text": "gemma3"}  # HF model_type -> llama.cpp architecture name
GEMMA = ("gemma2", "gemma3")


def write_gguf(model: Any, tokenizer: Any, path: Path,
               extra: Mapping[str, str | float] | None = None) -> Path:
    """``model`` (a transformers causal LM) and ``tokenizer`` as the GGUF file ``path``;
    ``extra``: further metadata (strings, float32s)."""
    import gguf

    arch = GGUF_ARCH.get(model.config.model_type, model.config.model_type)
    writer = gguf.GGUFWriter(str(path), arch)
    write_metadata(writer, model.config, arch)
    for key, value in (extra or {}).items():
        (writer.add_string if isinstance(value, str) else writer.add_float32)(key, value)
    write_tokenizer(writer, tokenizer)
    for name, array in gguf_tensors(model, arch):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_metadata(writer: Any, c: Any, arch: str) -> None:
    """The ``{arch}.*`` keys llama.cpp writes for a model of config ``c``."""
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(0)  # all float32
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta(c))
    rotary = c.rope_parameters.get("partial_rotary_factor", 1.0) if arch == "phi3" else 1.0
    writer.add_rope_dimension_count(int(head_dim * rotary))
    if arch in GEMMA:
        writer.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
        writer.add_final_logit_softcapping(c.final_logit_softcapping)


def rope_theta(c: Any) -> float:
    """The global rotary base (Gemma 3 keeps one per layer type; GGUF stores the full one)."""
    params = c.rope_parameters
    return float(params["full_attention"]["rope_theta"] if "full_attention" in params
                 else params["rope_theta"])


def write_tokenizer(writer: Any, tokenizer: Any) -> None:
    """The vocabulary (by id), merges and special ids of a fast BPE ``tokenizer``."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = sorted(state["vocab"].items(), key=lambda item: item[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([1] * len(vocab))  # all NORMAL
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    writer.add_pad_token_id(tokenizer.eos_token_id if pad is None else pad)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)


def gguf_tensors(model: Any, arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight; a tied lm_head is not written."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    out = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name} in architecture {arch}")
        array = rewrite(f"{name}.{suffix}", tensor.detach().to(torch.float32), model.config, arch)
        out.append((f"{name}.{suffix}", array.numpy().copy()))
    return out


def rewrite(name: str, w: torch.Tensor, c: Any, arch: str) -> torch.Tensor:
    """The tensor as llama.cpp stores it (what transformers' tensor processors undo)."""
    if arch in GEMMA and name.endswith("norm.weight"):
        return w + 1.0
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        heads = c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads
        return permute_rotary(w, heads)
    return w


def permute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: each head's (half, pair) rows interleaved as (pair, half)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
