"""The ``probe { mode = prompt }`` artifact: its ONNX export and the session that runs it.

Files (``export_prompt_onnx(..., DIR/NAME.onnx)``; names from ``compiler.names``):
- ``NAME.onnx``, the prefill graph (``prompt_graph.PromptPrefill``): input ``input_ids``
  int64 ``[batch, seq]`` (2 <= seq <= max_len, no padding); outputs ``logits`` float32
  ``[batch, seq, vocab]`` (the dense model's), ``present.{layer}.key|value`` float32
  ``[batch, kv_heads, seq, head_dim]`` for every layer with attention, ``kept.{layer}.{kind}``
  int64 ``[batch, keep]`` (ascending) per dynamic block, and with ``compensate``
  ``mean.{layer}.{kind}`` float32 ``[batch, units]`` (``units``: channels, or heads*head_dim);
  with ``kept = per-batch`` both have 1 for ``batch`` (one set for the batch);
- ``NAME.gather.onnx`` (``PromptGather``, run once per request): inputs the ``kept.*`` (and
  ``mean.*``); outputs ``w.{layer}.{kind}.{part}`` (parts: ``prompt_graph.weight_names``),
  ``[batch, ...]`` per sequence, without the ``batch`` dim with ``kept = per-batch``;
- ``NAME.decode.onnx`` (``PromptDecode``): inputs ``input_ids`` and ``position_ids`` int64
  ``[batch, seq]``, ``past_key_values.{layer}.key|value`` ``[batch, kv_heads, past,
  head_dim]``, then the ``w.*``; outputs ``logits`` and ``present.*`` (past + seq positions);
- ``NAME.gating.json``: the manifest, ``policy.mode = "prompt"``, ``graphs`` (each graph's
  file and every input/output with dtype and shape), ``keep`` per dynamic block, ``max_len``,
  ``bytes`` per file; ``NAME.kv.json`` the KV manifest ``runtime.generate`` reads (layers,
  kv_heads, EOS/pad, context).
H is an initializer of the prefill graph (prompt mode never updates it). Weights are not
shared between files: the full projections are in the prefill and gather graphs, the rest
(embedding, norms, k/v, lm_head, the dense blocks) in the prefill and decode graphs
(``bytes`` in the manifest; external data past protobuf's limit, per file). Every graph is
checked by ``gated.require_static_gating`` (no If/Loop/Scan/NonZero) at export.

``PromptSession`` runs it on onnxruntime with IOBinding: the cache, kept sets and gathered
weights stay OrtValues on the provider's device; only ids go up and logits come down.
A batch of prompts must share one length (no left padding: the probe would score pad
positions; ``PaddedBatch`` otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunec.compiler.ir import (
    MIN_SEQ,
    KeptScope,
    ModelShape,
    ProbeMode,
    ProbePolicy,
    Provider,
)
from prunec.compiler.names import prompt_graph_files

FORMAT = "prunec-prompt/1"


class PaddedBatch(ValueError):
    """Prompts of different lengths in one prompt-mode batch."""


@dataclass(frozen=True)
class Graphs:
    """A prompt-mode model's three torch modules and their I/O names."""

    prefill: Any
    gather: Any
    decode: Any
    cache: tuple[str, ...]  # "{layer}" per attention block, residual order
    dynamic: tuple[str, ...]  # "{layer}.{kind}" per dynamic block
    weights: tuple[str, ...]  # "w.{layer}.{kind}.{part}", gather output order
    compensate: bool
    per_batch: bool  # kept = per-batch: kept sets [1, keep], gathered tensors without batch

    def presents(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in self.cache for kv in ("key", "value")]

    def pasts(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in self.cache for kv in ("key", "value")]

    def kept(self) -> list[str]:
        return [f"kept.{n}" for n in self.dynamic]

    def means(self) -> list[str]:
        return [f"mean.{n}" for n in self.dynamic] if self.compensate else []


def build_graphs(model: Any, shape: ModelShape, policy: ProbePolicy, history: Any) -> Graphs:
    """The torch modules of ``model`` (dense or statically pruned) under ``policy``."""
    from prunec.passes.probe import build_gated, initial_state, layer_gates
    from prunec.passes.probe.prompt_graph import (
        PromptDecode,
        PromptGather,
        PromptPrefill,
        weight_names,
    )

    gated = build_gated(model, shape, policy, history)
    keys = [f"{g.index}.{kind}" for g in layer_gates(model, shape, policy)
            for kind, gate in (("attn", g.attn), ("mlp", g.mlp)) if gate is not None]
    blocks = gated.block_list()
    dynamic = tuple(k for k, b in zip(keys, blocks) if b.dynamic)
    weights = tuple(f"w.{k}.{part}" for k, b in zip(keys, blocks) if b.dynamic
                    for part in weight_names(b))
    cache = tuple(k.split(".")[0] for k in keys if k.endswith(".attn"))
    return Graphs(PromptPrefill(gated, initial_state(gated, history)).eval(),
                  PromptGather(gated).eval(), PromptDecode(gated).eval(), cache, dynamic,
                  weights, policy.compensate, policy.kept is KeptScope.PER_BATCH)


def _export(module: Any, args: tuple[Any, ...], dyn: Any, names: tuple[list[str], list[str]],
            path: Path, opset: int, fuse: bool) -> dict[str, int]:
    """One graph to ``path`` (onnxruntime's fused kernels where ``fuse``); the fusions
    applied (``export.fuse_for_onnxruntime``)."""
    import torch

    from prunec.runtime.export import fuse_for_onnxruntime, needs_external_data
    from prunec.runtime.gated import require_static_gating

    external = needs_external_data(sum(b.numel() * b.element_size() for b in module.buffers()))
    program = torch.onnx.export(module, args, None, dynamo=True, dynamic_shapes=dyn,
                                opset_version=opset, optimize=True, input_names=names[0],
                                output_names=names[1], verbose=False)
    assert program is not None
    fusions = fuse_for_onnxruntime(program.model) if fuse else {}
    program.save(str(path), external_data=external)
    del program
    require_static_gating(path)
    return fusions


def export_graphs(graphs: Graphs, shape: ModelShape, max_len: int, paths: dict[str, Path],
                  opset: int, fuse: bool = False) -> dict[str, dict[str, int]]:
    """Writes the three graphs (``paths``: prefill, gather, decode), each traced on the
    previous one's example outputs (batch 3, a 9-token prompt, 2 new tokens), the prefill
    and decode with onnxruntime's fused kernels where ``fuse`` (the gather has nothing to
    fuse); returns the fusions applied per graph."""
    import torch
    from torch.export import Dim

    batch, new = Dim("batch", min=1, max=4096), Dim("new", min=1, max=max_len)
    seq, past = Dim("seq", min=MIN_SEQ, max=max_len), Dim("past", min=MIN_SEQ, max=max_len)
    ids = torch.randint(0, shape.vocab, (3, min(max_len, 9)))
    cache, kept, means = _prefill_outputs(graphs, ids)
    fusions = {"prefill": _export(
        graphs.prefill, (ids,), {"input_ids": {0: batch, 1: seq}},
        (["input_ids"], ["logits", *graphs.presents(), *graphs.kept(), *graphs.means()]),
        paths["prefill"], opset, fuse)}
    row = None if graphs.per_batch else {0: batch}  # per batch: [1, keep] / no batch dim
    _export(graphs.gather, (kept, means), {"kept": [row] * len(kept), "means": [row] * len(means)},
            ([*graphs.kept(), *graphs.means()], list(graphs.weights)), paths["gather"], opset,
            fuse=False)
    with torch.no_grad():
        weights = list(graphs.gather(kept, means))
    step = torch.randint(0, shape.vocab, (3, 2))
    pos = torch.arange(ids.shape[1], ids.shape[1] + 2).expand(3, -1).contiguous()
    dyn = {"input_ids": {0: batch, 1: new}, "position_ids": {0: batch, 1: new},
           "pasts": [{0: batch, 2: past}] * len(cache), "weights": [row] * len(weights)}
    fusions["decode"] = _export(graphs.decode, (step, pos, cache, weights), dyn,
                                (["input_ids", "position_ids", *graphs.pasts(),
                                  *graphs.weights], ["logits", *graphs.presents()]),
                                paths["decode"], opset, fuse)
    return fusions


def _prefill_outputs(graphs: Graphs, ids: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(cache, kept sets, probe means) of the eager prefill on ``ids``."""
    import torch

    with torch.no_grad():
        out = graphs.prefill(ids)
    n_cache, n_kept = len(graphs.presents()), len(graphs.dynamic)
    return (list(out[1:1 + n_cache]), list(out[1 + n_cache:1 + n_cache + n_kept]),
            list(out[1 + n_cache + n_kept:]))


def _io(path: Path) -> dict[str, Any]:
    """Every input and output of the ONNX file: name, element type, shape (dims or names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name,
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
                for v in values]

    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"file": path.name, "bytes": size, "inputs": describe(model.graph.input),
            "outputs": describe(model.graph.output)}


def export_prompt_onnx(model: Any, shape: ModelShape, policy: ProbePolicy, history: Any,
                       path: str | Path, opset: int = 18, fuse: bool = False
                       ) -> dict[str, Any]:
    """Export a prompt-mode artifact (see the module docstring), with onnxruntime's fused
    kernels where ``fuse``; returns its manifest."""
    from prunec.runtime.gated import policy_json

    path = Path(path)
    graphs = build_graphs(model, shape, policy, history)
    paths = {k: path.with_name(v) for k, v in prompt_graph_files(path.name).items()}
    fusions = export_graphs(graphs, shape, history.max_len, paths, opset, fuse)
    dynamic = [b for b in graphs.prefill.gated.block_list() if b.dynamic]
    manifest = {"format": FORMAT, "onnx_path": path.name,
                "keep": {f"kept.{k}": int(b.gate.keep) for k, b in zip(graphs.dynamic, dynamic)},
                "max_len": history.max_len, "opset": opset, "policy": policy_json(policy),
                "model": asdict(shape), "compensate": policy.compensate, "fusions": fusions,
                "graphs": {k: _io(p) for k, p in paths.items()}}
    path.with_suffix(".gating.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_kv_manifest(path, model, shape, graphs, manifest["graphs"]["decode"], history.max_len)
    return manifest


def write_kv_manifest(path: Path, model: Any, shape: ModelShape, graphs: Graphs,
                      decode: dict[str, Any], max_len: int) -> None:
    """``NAME.kv.json`` as ``runtime.export`` writes it, for the decode graph's names, with
    the context cut to ``max_len`` (the rope tables' length)."""
    from prunec.passes.cache_io import CacheLayer, CacheLayout
    from prunec.passes.probe.layout import local_heads
    from prunec.passes.reference import decoder_layers
    from prunec.runtime.export import kv_manifest
    from prunec.runtime.generate import kv_manifest_path

    layers = decoder_layers(model)
    cache = [CacheLayer(int(i), local_heads(layers[int(i)].self_attn, shape)[1])
             for i in graphs.cache]
    kv = kv_manifest(path.name, CacheLayout(tuple(cache), shape.head_dim), model)
    kv.update(inputs=[v["name"] for v in decode["inputs"]],
              outputs=[v["name"] for v in decode["outputs"]],
              context_length=min(int(kv["context_length"]), max_len))
    kv_manifest_path(path).write_text(json.dumps(kv, indent=2) + "\n")


def is_prompt_mode(manifest: dict[str, Any] | None) -> bool:
    """Whether an artifact's ``.gating.json`` describes a prompt-mode artifact."""
    return bool((manifest or {}).get("policy", {}).get("mode") == ProbeMode.PROMPT.value)


@dataclass
class PromptState:
    """One request batch's device state: the KV cache, the kept sets (and means), and the
    gathered weights once ``PromptSession.gather`` ran."""

    cache: list[Any]
    kept: list[Any]  # the kept sets, then (compensating) the probe means: the gather's inputs
    weights: list[Any] | None = None


class PromptSession:
    """onnxruntime sessions of the three graphs (``providers`` in order of preference)."""

    def __init__(self, onnx_path: Path, providers: Sequence[Provider] = (Provider.CPU,)
                 ) -> None:
        from prunec.runtime.session import open_session

        self.manifest = json.loads(onnx_path.with_suffix(".gating.json").read_text())
        graphs = self.manifest["graphs"]
        self.opened = {k: open_session(onnx_path.with_name(g["file"]), providers)
                       for k, g in graphs.items()}
        self.sessions = {k: s.session for k, s in self.opened.items()}
        self.device = "cuda" if self.opened["prefill"].used[0] == "CUDAExecutionProvider" \
            else "cpu"
        self.names = {k: ([v["name"] for v in g["inputs"]], [v["name"] for v in g["outputs"]])
                      for k, g in graphs.items()}

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, PromptState]:
        """(dense logits ``[batch, seq, vocab]``, the request's state) of prompts ``ids``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not MIN_SEQ <= ids.shape[1] <= self.max_len:
            raise ValueError(f"prompt of {ids.shape[1]} tokens outside [{MIN_SEQ}, "
                             f"{self.max_len}] supported by this artifact")
        outs = self._run("prefill", {"input_ids": ids})
        n_cache = sum(1 for n in self.names["prefill"][1] if n.startswith("present."))
        return outs[0].numpy(), PromptState(outs[1:1 + n_cache], outs[1 + n_cache:])

    def gather(self, state: PromptState) -> None:
        """The kept weights of ``state``'s kept sets (once per request)."""
        if state.weights is None:
            state.weights = self._run("gather", dict(zip(self.names["gather"][0], state.kept)),
                                      host=False)

    def decode(self, ids: np.ndarray, positions: np.ndarray, state: PromptState) -> np.ndarray:
        """Logits ``[batch, seq, vocab]`` of ``ids`` at ``positions`` after ``state``'s
        cache (extended in place of the state)."""
        self.gather(state)
        assert state.weights is not None
        names = self.names["decode"][0]
        feeds: dict[str, Any] = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                                 "position_ids": np.ascontiguousarray(positions, dtype=np.int64)}
        feeds.update(zip(names[2:], [*state.cache, *state.weights]))
        outs = self._run("decode", feeds)
        state.cache = outs[1:]
        logits: np.ndarray = outs[0].numpy()
        return logits

    def logits(self, ids: np.ndarray, prompt_len: int) -> np.ndarray:
        """Teacher-forced logits ``[batch, seq, vocab]``: dense over the prompt
        ``0 .. prompt_len-1``, pruned over the rest (``prompt.prompt_forward``'s)."""
        ids = np.asarray(ids, dtype=np.int64)
        head, state = self.prefill(ids[:, :prompt_len])
        b, t = ids.shape
        positions = np.broadcast_to(np.arange(prompt_len, t, dtype=np.int64), (b, t - prompt_len))
        return np.concatenate([head, self.decode(ids[:, prompt_len:], positions, state)], axis=1)

    def _run(self, graph: str, feeds: dict[str, Any], host: bool = True) -> list[Any]:
        """Run ``graph`` with IOBinding: numpy feeds go up, OrtValues stay; outputs stay on
        the device, but for ``logits`` (to the host when ``host``)."""
        session = self.sessions[graph]
        io = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                io.bind_cpu_input(name, value)
            else:
                io.bind_ortvalue_input(name, value)
        for name in self.names[graph][1]:
            io.bind_output(name, "cpu" if host and name == "logits" else self.device)
        session.run_with_iobinding(io)
        return list(io.get_outputs())


def eval_prompt_len(prompt_len: int | None, seq_len: int) -> int:
    """The prompt a prompt-mode artifact is scored from: ``--prompt-len``, else (the build's
    evaluation) the first half of each sequence (at least ``MIN_SEQ`` tokens)."""
    return prompt_len if prompt_len is not None else max(MIN_SEQ, seq_len // 2)


def prompt_runner(onnx_path: Path, providers: tuple[Provider, ...],
                  prompt_len: int | None) -> Any:
    """``session.Runner`` (OrtSession of the prefill, logits_fn, no reset) whose logits are
    ``PromptSession.logits``: dense over the prompt, pruned over the continuation."""
    import torch

    session = PromptSession(onnx_path, providers)

    def run(batch: Any) -> Any:
        p = eval_prompt_len(prompt_len, int(batch.shape[1]))
        return torch.from_numpy(session.logits(batch.numpy(), p))

    return session.opened["prefill"], run, None
