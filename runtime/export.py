"""ONNX export of a (pruned) captured causal LM, with or without a KV cache.

Contract of the written file, with the KV cache (``export onnx { kv_cache = on }``, the
default for static graphs; the onnxruntime-genai / Hugging Face Optimum convention):
- inputs ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, total]
  (total = past + seq; 0 marks left padding), ``position_ids`` int64 [batch, seq], and for
  every layer ``i`` whose attention the plan keeps (``i`` is the ORIGINAL layer index),
  ``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads_i, past, head_dim];
- outputs ``logits`` float32 [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  [batch, kv_heads_i, past + seq, head_dim] (the past with this call's keys appended);
- kv_heads_i (the KV groups the plan keeps in layer i) and head_dim are static ints in the
  graph; batch, seq, past and total are dim_params ``batch``, ``seq``, ``past``, ``total``;
  layers whose attention was removed have no cache inputs or outputs;
- prefill is past = 0 (past tensors with a 0-length axis 2); each decode step feeds the
  presents back as the next pasts, the mask grown by one column and position_ids =
  the position of the new token (for a left-padded row: count of its mask's ones - 1);
- cache and weights are float16 with ``dtype = float16`` (logits stay float32);
- ``model.kv.json`` beside the file (``write_kv_manifest``; the ONNX file's stem +
  ``.kv.json``) is what a runtime needs: ``format`` ("prunec-kv/1"), ``onnx``, ``inputs``,
  ``outputs``, ``layers`` (original indices), ``kv_heads`` (a list aligned with
  ``layers``), ``head_dim``, ``dtype`` (of the cache), ``num_hidden_layers``,
  ``num_attention_heads``, ``num_key_value_heads`` (dense), ``hidden_size``,
  ``vocab_size``, ``context_length`` (the config's max_position_embeddings),
  ``bos_token_id``, ``eos_token_id`` (int or list), ``pad_token_id`` (null when unset).

Without the cache (``kv_cache = off``): one input ``input_ids`` int64 [batch, seq] and one
output ``logits`` float32 [batch, seq, vocab]; batch and seq are symbolic.

Both:
- weights are embedded (one self-contained .onnx) when they fit in protobuf's 2 GB limit;
  otherwise they go to ``<name>.onnx.data`` next to it and ``ExportInfo.external_data`` says
  so (``needs_external_data``, the one rule every exporter uses). SmolLM2-135M is ~540 MB
  in float32, so it is embedded;
- tied embeddings stay one initializer: the exported program has one tensor for
  ``embed_tokens`` and ``lm_head`` and the exporter reads it twice (Gather, and MatMul
  after a Transpose that onnxruntime folds at session creation, in memory only).

How: ``torch.onnx.export`` (the dynamo exporter, onnxscript underneath) on the exported
program from ``passes.pipeline.prune_graph`` (a GraphModule is re-exported first), then
cheap onnx-ir cleanups (unused nodes, common subexpressions, identities: ~1 s on SmolLM2),
optionally onnxruntime fusions, then ``onnx.checker`` on the saved file and an onnxruntime
CPU session as a load check.
The full onnxscript optimizer (constant folding) is not run: on SmolLM2 it took ~55 s and
made no measurable difference to onnxruntime latency (0.68 s vs 0.74 s at 1x256 on the
2-core dev box), because onnxruntime folds constants itself when a session is created.

Fusions (``ExportConfig.fuse``; the spec's ``fuse = on``, the default for static graphs):
``onnxscript.rewriter.ort_fusions.optimize_for_ort`` rewrites decomposed patterns into
onnxruntime's fused kernels: RMSNorm -> SimplifiedLayerNormalization, residual add + RMSNorm
-> SkipSimplifiedLayerNormalization, scaled dot-product attention -> MultiHeadAttention (per
layer, whatever head count the plan left; rotary stays decomposed). The file then needs
onnxruntime (its CPU and CUDA providers have these kernels); ``fuse = off`` keeps standard
ONNX. ``onnx.checker`` does not know these ops, so a fused file is checked by onnxruntime
loading it. On SmolLM2 fusion takes ~14 s and removes ~1,000 of ~2,600 nodes; the work it
removes does not shrink with pruning, so fused graphs get closer to the FLOPs bound
(``bench/static_latency.py``). Logits agree with the unfused graph within ~2e-5 relative.
The rewrite rules are module-level objects whose matchers remember the last graph they
matched; ``forget_matches`` clears that after the fusions, else the graph would keep every
weight of the export (the loaded model's included) alive for the rest of the build.
On a KV-cache graph the same fusions apply, and attention becomes MultiHeadAttention over
the concatenated keys/values: the cache's Concat stays a plain op outside the kernel, since
``optimize_for_ort`` (onnxscript 0.7.2) did not rewrite this graph's attention into
GroupQueryAttention or MultiHeadAttention with past_key/past_value inputs (tiny Llama,
measured: ``sdpa_via_mha`` on every kept layer, no ``gqa``); the fused cache graph gives
the same greedy tokens (tested in ``tests/runtime/test_export_kv.py``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx.numpy_helper
import onnx_ir as ir
import torch
from onnx_ir.passes import common
from torch.export import ExportedProgram
from torch.fx import GraphModule

from prunec.passes.cache_io import CacheLayout
from prunec.passes.capture import DEFAULT_CAPTURE, example_input, forget_last_trace, reexport
from prunec.runtime.generate import kv_manifest_path  # the reader's rule for the name
from prunec.runtime.onnx_wire import varint

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # keep a margin under 2 GiB for the graph itself


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    optimize: bool = True
    check_onnxruntime: bool = True
    fuse: bool = False  # onnxruntime contrib-op fusions (see the module docstring)
    cache: CacheLayout | None = None  # the KV-cache graph's layout (None: input_ids -> logits)
    external_limit: int = PROTOBUF_LIMIT  # weights of this many bytes go to external data


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    bytes: int  # .onnx plus external data, if any
    external_data: bool
    opset: int
    nodes: int
    initializers: int
    parameters: int  # elements over all initializers
    seconds: float
    fusions: dict[str, int] = field(default_factory=dict)  # kind -> count, only those applied


def _program(pruned: ExportedProgram | GraphModule) -> ExportedProgram:
    return pruned if isinstance(pruned, ExportedProgram) else reexport(pruned)


def _weight_bytes(ep: ExportedProgram) -> int:
    return sum(t.numel() * t.element_size() for t in ep.state_dict.values())


def needs_external_data(weight_bytes: int, limit: int = PROTOBUF_LIMIT) -> bool:
    """Whether weights of ``weight_bytes`` must go to a ``.data`` file (every exporter's rule;
    ``limit`` is a parameter so tests can lower it)."""
    return weight_bytes >= limit


def save_onnx(model: onnx.ModelProto, path: Path, limit: int = PROTOBUF_LIMIT) -> bool:
    """Save ``model`` (weights loaded) to ``path``, its weights in ``<name>.data`` beside it
    when they reach ``limit`` bytes (``needs_external_data``); True when they went there."""
    size = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer)
    external = needs_external_data(size, limit)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=data.name, size_threshold=0)
    return external


CACHE_INPUTS = ("input_ids", "attention_mask", "position_ids")


def past_names(cache: CacheLayout) -> list[str]:
    return [f"past_key_values.{c.layer}.{kv}" for c in cache.layers for kv in ("key", "value")]


def present_names(cache: CacheLayout) -> list[str]:
    return [f"present.{c.layer}.{kv}" for c in cache.layers for kv in ("key", "value")]


def io_names(cache: CacheLayout | None) -> tuple[list[str], list[str]]:
    """The graph's input and output names (see the module docstring)."""
    if cache is None:
        return ["input_ids"], ["logits"]
    return [*CACHE_INPUTS, *past_names(cache)], ["logits", *present_names(cache)]


def to_onnx_program(ep: ExportedProgram, config: ExportConfig) -> torch.onnx.ONNXProgram:
    """Translate with the dynamo exporter; clean up with onnx-ir passes if asked."""
    inputs, outputs = io_names(config.cache)
    args = ep.example_inputs[0] if config.cache else (example_input(DEFAULT_CAPTURE),)
    program = torch.onnx.export(
        ep, args, dynamo=True, opset_version=config.opset,
        input_names=inputs, output_names=outputs, optimize=False, verbose=False,
    )
    forget_last_trace()  # the exporter's decomposition is a trace too
    assert program is not None
    if config.cache is not None:
        name_cache_dims(program.model)
    if config.optimize:
        cleanup(program.model)
    return program


def name_cache_dims(model: ir.Model) -> None:
    """Call the symbolic dims of a cache graph's inputs batch, seq, total and past, in the
    graph's inputs and outputs (presents: ``past + seq``)."""
    ins = {v.name: v for v in model.graph.inputs}
    names = {}
    for input_name, axis, name in (("input_ids", 0, "batch"), ("input_ids", 1, "seq"),
                                   ("attention_mask", 1, "total")):
        names[str(_dim(ins[input_name], axis))] = name
    for past in (v for v in model.graph.inputs if v.name not in CACHE_INPUTS):
        names[str(_dim(past, 2))] = "past"  # one length, whatever symbol the trace gave each
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None:
            value.shape = ir.Shape([_renamed(d, names) for d in value.shape])


def _dim(value: ir.Value, axis: int) -> object:
    assert value.shape is not None
    return value.shape[axis]


def _renamed(dim: object, names: dict[str, str]) -> int | ir.SymbolicDim:
    if isinstance(dim, int):
        return dim
    text = re.sub(r"\b\w+\b", lambda m: names.get(m.group(0), m.group(0)), str(dim))
    return ir.SymbolicDim(text)


def kv_manifest(onnx_file: str, cache: CacheLayout, model: Any) -> dict[str, Any]:
    """``model.kv.json``'s content (see the module docstring) for an HF causal LM."""
    cfg, gen = model.config, getattr(model, "generation_config", None)
    inputs, outputs = io_names(cache)
    return {
        "format": "prunec-kv/1", "onnx": onnx_file, "inputs": inputs, "outputs": outputs,
        "layers": [c.layer for c in cache.layers],
        "kv_heads": [c.kv_heads for c in cache.layers], "head_dim": cache.head_dim,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size, "context_length": cfg.max_position_embeddings,
        **{key: _token_id(key, gen, cfg) for key in TOKEN_IDS},
    }


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _token_id(key: str, *sources: Any) -> Any:
    """The first set value of ``key`` in the generation config, then the model config."""
    for source in sources:
        value = getattr(source, key, None)
        if value is not None:
            return list(value) if isinstance(value, list | tuple) else int(value)
    return None


def write_kv_manifest(onnx_path: Path, cache: CacheLayout, model: Any) -> Path:
    path = kv_manifest_path(onnx_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kv_manifest(onnx_path.name, cache, model), indent=2) + "\n")
    return path


def fuse_for_onnxruntime(model: ir.Model) -> dict[str, int]:
    """Rewrite ``model`` in place with onnxruntime's fused kernels; the applied counts."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    _, counts = optimize_for_ort(model)
    forget_matches()
    return {kind: n for kind, n in counts.items() if n}


def cleanup(model: ir.Model) -> None:
    """Remove unused nodes, merge common subexpressions, drop Identity nodes (in place)."""
    passes = (common.RemoveUnusedNodesPass(), common.CommonSubexpressionEliminationPass(),
              common.IdentityEliminationPass(), common.RemoveUnusedNodesPass())
    for cleanup_pass in passes:
        cleanup_pass(model)


def export_onnx(pruned: ExportedProgram | GraphModule, path: Path, opset: int = 18,
                config: ExportConfig | None = None) -> ExportInfo:
    """Write ``pruned`` to ``path`` as ONNX; check it; return what was written."""
    start = time.perf_counter()
    config = config or ExportConfig(opset=opset)
    ep = _program(pruned)
    external = needs_external_data(_weight_bytes(ep), config.external_limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = to_onnx_program(ep, config)
    del ep  # the caller's graph may live on; ours goes
    fusions = fuse_for_onnxruntime(program.model) if config.fuse else {}
    if external:
        program.save(str(path), external_data=True)
    else:
        save_embedded(program.model, path)
    info = _info(program.model, path, external, 0.0, fusions)
    del program  # the checks below load the file: not while the IR holds the weights too
    if not fusions:  # onnx.checker knows no com.microsoft op (nor SimplifiedLayerNormalization,
        onnx.checker.check_model(str(path))  # which onnxruntime registers in the default domain)
    if config.check_onnxruntime:
        check_loads(path)
    return dataclasses.replace(info, seconds=time.perf_counter() - start)


def forget_matches() -> None:
    """Make onnxscript's pattern matchers forget the last graph they matched: they live in
    module-level rewrite rules and would keep that graph (and every value ever an input of
    it, weights included) alive until the next match."""
    import gc

    from onnxscript.rewriter._matcher import SimplePatternMatcher

    for matcher in (o for o in gc.get_objects() if isinstance(o, SimplePatternMatcher)):
        matcher.__dict__.update(_graph=None, _current_node=None, _match=None, _tracer=None)


def save_embedded(model: ir.Model, path: Path) -> None:
    """Write ``model`` with its weights inside the file, one initializer at a time.

    Protobuf merges a singular message field that appears twice (``ModelProto.graph``) and
    appends to a repeated one (``GraphProto.initializer``), so the model without its
    initializers (their value_info kept) followed by one ``graph { initializer { ... } }``
    record per weight parses as the ModelProto ``ir.save`` writes (value_info in another
    order); but ``ir.save`` holds the whole proto and then its bytes (two more copies of
    every weight), this at most one weight's."""
    inits = dict(model.graph.initializers)
    model.graph.initializers.clear()
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        model.graph.initializers.update(inits)
    inputs = {v.name for v in model.graph.inputs}
    proto.graph.value_info.extend(ir.serde.serialize_value(v) for v in inits.values()
                                  if v.type is not None and v.name not in inputs)
    head = proto.SerializeToString()
    with path.open("wb") as f:
        f.write(head)
        del head
        for value in inits.values():
            _write_initializer(f, value)


_GRAPH_FIELD, _INITIALIZER_FIELD = b"\x3a", b"\x2a"  # (7 << 3) | 2 and (5 << 3) | 2: length-
# delimited fields 7 (ModelProto.graph) and 5 (GraphProto.initializer)


def _write_initializer(f: Any, value: ir.Value) -> None:
    """One ``graph { initializer { ... } }`` record; the tensor's bytes go from its own
    memory to the file (``raw_data``, field 9, written last), never into a proto."""
    tensor = value.const_value
    if tensor is None:
        raise RuntimeError(f"initializer {value.name!r} has no value")
    head = onnx.TensorProto(name=value.name or tensor.name, data_type=tensor.dtype.value,
                            dims=list(tensor.shape.numpy()))
    if tensor.doc_string:
        head.doc_string = tensor.doc_string
    data = memoryview(_contiguous(tensor)).cast("B")
    head_bytes = head.SerializeToString()
    body = len(head_bytes) + len(_RAW_DATA_FIELD) + len(varint(data.nbytes)) + data.nbytes
    inner = len(_INITIALIZER_FIELD) + len(varint(body)) + body
    for part in (_GRAPH_FIELD, varint(inner), _INITIALIZER_FIELD, varint(body), head_bytes,
                 _RAW_DATA_FIELD, varint(data.nbytes), data):
        f.write(part)


_RAW_DATA_FIELD = b"\x4a"  # (9 << 3) | 2: TensorProto.raw_data (little-endian bytes)


def _contiguous(tensor: Any) -> Any:
    """The tensor's bytes as a C-contiguous numpy array (a view when it already is one)."""
    import numpy as np

    array = tensor.numpy()
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def check_loads(path: Path) -> None:
    """Open ``path`` in onnxruntime (CPU); raises if the runtime rejects the graph."""
    import onnxruntime as ort

    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _info(model: ir.Model, path: Path, external: bool, seconds: float,
          fusions: dict[str, int]) -> ExportInfo:
    """Sizes and counts of the written model (read from the in-memory IR, not the file)."""
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    inits = model.graph.initializers.values()
    elements = sum(v.const_value.size for v in inits if v.const_value is not None)
    opset = model.opset_imports.get("", 0)
    return ExportInfo(path, size, external, opset, len(list(model.graph)), len(inits),
                      elements, seconds, fusions)
