"""ONNX export of the probe-gated model, and the runtime that carries the history H.

Artifact (``export_gated_onnx(..., path)`` with ``path = DIR/NAME.onnx``):
- ``NAME.onnx``: inputs ``input_ids`` int64 ``[batch, seq]`` (2 <= seq <= max_len) and, per
  dynamic block in layer order (attention before MLP), ``history.{layer}.attn`` float32
  ``[heads_l * head_dim, max_len]`` / ``history.{layer}.mlp`` float32 ``[channels_l,
  max_len]`` (a row per channel, a column per position); outputs ``logits`` ``[batch, seq,
  vocab]``, then ``history_out.{layer}.{kind}`` (same shapes: feed them back as the next
  call's ``history.*``), then, only when exported with ``debug=True``, ``kept.{layer}.{kind}``
  int64 ``[keep]`` (TopK order);
- ``NAME.onnx.data``: the weights, only when they pass protobuf's 2 GB limit
  (``runtime.export.save_onnx``, the rule every export shares);
- ``NAME.history.npz``: the initial H, one array per ``history.*`` input name;
- ``NAME.gating.json``: the manifest (names, shapes, per-layer keep counts, policy numbers).
H column t is absolute position t; a batch of length T reads/updates columns 0..T-1 (EMA,
kept channels only). The graph is statically shaped in the pruned dims: TopK with constant
K, Gather of weight rows, MatMul; no If/Loop/NonZero (``check_static_gating`` verifies it on
every export: a violation is a prunec bug, raised as ``GatingGraphError``).
``GatedSession`` runs it with onnxruntime, keeping H as OrtValues on the provider's device
(IOBinding; on CUDA H never leaves the GPU). Where ``inplace_histories`` proves it safe
(recorded in the manifest as ``history_inplace``), each ``history_out.*`` is bound to the
very buffer of its ``history.*`` input, so the scatter updates H in place instead of
copying the whole H every call.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunec.compiler.diagnostics import user_error
from prunec.compiler.ir import MIN_SEQ, ModelShape, ProbeMode, ProbePolicy

FORBIDDEN_OPS = frozenset({"If", "Loop", "Scan", "NonZero"})


def min_prompt_len(manifest: dict[str, Any] | None) -> int:
    """The shortest prompt an artifact scores a continuation from (``eval --prompt-len``):
    ``MIN_SEQ`` when a prompt-mode probe scores the prompt (its probe takes >= 2 positions),
    else 1. ``manifest``: the artifact's ``.gating.json``, None for a static artifact."""
    return min_prompt_len_of((manifest or {}).get("policy", {}).get("mode"))


def min_prompt_len_of(mode: str | None) -> int:
    """``min_prompt_len`` for a probe ``mode`` (its value; None: no probe)."""
    return MIN_SEQ if mode == ProbeMode.PROMPT.value else 1


@dataclass(frozen=True)
class GatedExportInfo:
    onnx_path: str
    history_path: str
    manifest_path: str
    history_inputs: tuple[str, ...]  # history.{layer}.{attn|mlp}
    history_outputs: tuple[str, ...]  # history_out.{layer}.{attn|mlp}
    kept_outputs: tuple[str, ...]  # kept.{layer}.{kind} (debug exports only)
    keep: dict[str, int]  # per history name: units kept per batch (heads or channels)
    max_len: int
    opset: int
    history_inplace: tuple[str, ...] = ()  # inputs whose output may reuse their buffer


def _names(history_names: tuple[str, ...], debug: bool) -> tuple[list[str], list[str]]:
    outs = ["logits"] + [n.replace("history.", "history_out.", 1) for n in history_names]
    if debug:
        outs += [n.replace("history.", "kept.", 1) for n in history_names]
    return ["input_ids", *history_names], outs


def _export(gated: Any, state: list[Any], vocab: int, max_len: int, path: Path, opset: int,
            debug: bool) -> tuple[str, ...]:
    """Writes the graph to ``path``; returns the histories it may update in place."""
    import torch
    from torch.export import Dim

    from prunec.runtime.export import needs_external_data

    class _Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gated = gated

        def forward(self, input_ids: torch.Tensor, histories: list[torch.Tensor]) -> Any:
            logits, new, kept = self.gated(input_ids, histories)
            return (logits, *new, *(kept if debug else []))

    ids = torch.randint(0, vocab, (3, min(max_len, 17)))
    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=MIN_SEQ, max=max_len)
    dyn = {"input_ids": {0: batch, 1: seq}, "histories": [None] * len(state)}
    inputs, outputs = _names(gated.history_names, debug)
    external = needs_external_data(sum(b.numel() * b.element_size() for b in gated.buffers()))
    torch.onnx.export(_Flat().eval(), (ids, list(state)), str(path), dynamo=True,
                      dynamic_shapes=dyn, opset_version=opset, optimize=True,
                      input_names=inputs, output_names=outputs, external_data=external,
                      verbose=False)
    return _finish(path, dict(zip(inputs[1:], outputs[1:1 + len(state)])))


def _finish(path: Path, pairs: dict[str, str]) -> tuple[str, ...]:
    """Call the symbolic dims of ``input_ids`` ``batch`` and ``seq`` everywhere in the graph,
    and (on the same loaded model) find the histories ``inplace_histories`` proves safe."""
    import onnx

    from prunec.runtime.export import save_onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = {dims[0].dim_param: "batch", dims[1].dim_param: "seq"}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    save_onnx(model, path)  # external data past protobuf's limit, like every export
    return inplace_histories(model, pairs)


def check_static_gating(path: str | Path) -> list[str]:
    """Problems with a gated graph: control flow or data-dependent shapes (empty = fine)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({f"forbidden op {n.op_type}" for n in model.graph.node
                   if n.op_type in FORBIDDEN_OPS})


class GatingGraphError(RuntimeError):
    """The exporter produced a gated graph ``check_static_gating`` rejects: a prunec bug."""


def require_static_gating(path: str | Path) -> None:
    """Raise ``GatingGraphError`` naming every problem ``check_static_gating`` finds."""
    problems = check_static_gating(path)
    if problems:
        raise GatingGraphError(f"the gated graph {Path(path).name} is not statically gated: "
                               + ", ".join(problems))


def inplace_histories(model: Any, pairs: dict[str, str]) -> tuple[str, ...]:
    """The history inputs whose output may be written into the input's own buffer.

    ``pairs`` maps ``history.*`` input names to their ``history_out.*`` outputs. A pair
    qualifies when the output is produced by a ScatterND whose data input is the history
    input itself (both onnxruntime's CPU and CUDA kernels skip their input-to-output copy
    when the two buffers are the same) and every other node that reads the input is an
    ancestor of that ScatterND, so every read happens before the write whatever order the
    runtime picks. The input must not also be a graph output."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def ancestors(node: Any) -> set[int]:
        seen: set[int] = set()
        stack = [producer[i] for i in node.input if i in producer]
        while stack:
            cur = stack.pop()
            if id(cur) not in seen:
                seen.add(id(cur))
                stack.extend(producer[i] for i in cur.input if i in producer)
        return seen

    safe = []
    for name, out in pairs.items():
        scatter = producer.get(out)
        if (scatter is None or scatter.op_type != "ScatterND" or scatter.input[0] != name
                or name in outputs or list(scatter.input).count(name) != 1):
            continue
        before = ancestors(scatter)
        if all(node is scatter or id(node) in before for node in readers.get(name, [])):
            safe.append(name)
    return tuple(safe)


def _keep_counts(gated: Any) -> dict[str, int]:
    blocks = [b for b in gated.blocks if b.dynamic]
    return {n: b.gate.keep for n, b in zip(gated.history_names, blocks)}


def export_gated_onnx(model: Any, shape: ModelShape, policy: ProbePolicy, history: Any,
                      path: str | Path, opset: int = 18, debug: bool = False,
                      probe_free: bool = False, fuse: bool = False) -> GatedExportInfo:
    """Export ``model`` (dense or statically pruned) with probe gating under ``policy``.

    ``history`` is the ``History`` from ``calibrate_history``; ``debug`` adds the kept
    indices as outputs; ``probe_free`` (benchmarks only) scores from H alone; ``fuse``
    (``compiler.ir.fusable``: prompt mode only) onnxruntime's fused kernels. Writes the
    three artifact files next to ``path``."""
    from prunec.passes.probe import build_gated, initial_state

    path = Path(path)
    if policy.mode is ProbeMode.PROMPT:  # its own three graphs: runtime.prompt_mode
        from prunec.runtime.prompt_mode import export_prompt_onnx

        manifest = export_prompt_onnx(model, shape, policy, history, path, opset, fuse)
        return GatedExportInfo(str(path), "", str(path.with_suffix(".gating.json")), (), (),
                               (), manifest["keep"], history.max_len, opset)
    gated = build_gated(model, shape, policy, history, probe_free)
    state = initial_state(gated, history)
    inplace = _export(gated, state, shape.vocab, history.max_len, path, opset, debug)
    require_static_gating(path)
    inputs, outputs = _names(gated.history_names, debug)
    n = len(gated.history_names)
    info = GatedExportInfo(str(path), str(path.with_suffix(".history.npz")),
                           str(path.with_suffix(".gating.json")), tuple(inputs[1:]),
                           tuple(outputs[1:1 + n]), tuple(outputs[1 + n:]),
                           _keep_counts(gated), history.max_len, opset, inplace)
    arrays: dict[str, Any] = {k: v.numpy() for k, v in zip(inputs[1:], state)}
    np.savez(info.history_path, **arrays)  # Any: numpy's stub types **kwds like allow_pickle
    # file names only: a build writes into a temporary directory and renames it
    files = {k: Path(getattr(info, k)).name for k in ("onnx_path", "history_path",
                                                       "manifest_path")}
    manifest = {**asdict(info), **files, "policy": policy_json(policy),
                "model": asdict(shape)}
    Path(info.manifest_path).write_text(json.dumps(manifest, indent=2) + "\n")
    return info


def policy_json(policy: ProbePolicy) -> dict[str, Any]:
    return {"ratio": policy.ratio, "targets": [t.value for t in policy.targets],
            "mode": policy.mode.value, "token_fraction": policy.token_fraction,
            "sample_fraction": policy.sample_fraction, "momentum": policy.momentum,
            "metric": policy.metric.value, "round_to": policy.round_to,
            "compensate": policy.compensate, "kept": policy.kept.value}


def find_manifest(artifact: str | Path) -> Path:
    """The ``*.gating.json`` of an artifact (its directory, its .onnx, or the json itself)."""
    p = Path(artifact)
    if p.suffix == ".json":
        return p
    if p.suffix == ".onnx":
        return p.with_suffix(".gating.json")
    found = sorted(p.glob("*.gating.json"))
    if not found:
        raise FileNotFoundError(f"no *.gating.json in {p}")
    return found[0]


class GatedSession:
    """onnxruntime session of a gated artifact that carries H from call to call.

    ``run(input_ids) -> logits`` (numpy). H lives in OrtValues on the first provider's
    device and is rebound through IOBinding, so on CUDA it stays on the GPU; logits and
    debug outputs come back to the host. ``reset()`` restores the shipped initial H. With
    ``inplace`` (default), the histories the manifest lists as ``history_inplace`` are
    updated in their own buffers; ``inplace=False`` (or an artifact without that list)
    binds fresh outputs and rebinds them as the next call's inputs."""

    def __init__(self, artifact: str | Path, providers: list[str] | None = None,
                 session_options: Any = None, inplace: bool = True) -> None:
        import onnxruntime as ort

        manifest_path = find_manifest(artifact)
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("policy", {}).get("mode") == ProbeMode.PROMPT.value:
            raise user_error("P0404", f"{manifest_path.parent} is a probe mode = prompt "
                             "artifact: it decodes, it does not carry H from batch to batch",
                             str(manifest_path), "use `prunec generate` or `prunec eval "
                             "--prompt-len` (runtime.prompt_mode.PromptSession)")
        base = manifest_path.parent
        onnx_path = base / Path(self.manifest["onnx_path"]).name
        self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._init = dict(np.load(base / Path(self.manifest["history_path"]).name))
        self.inputs = tuple(self.manifest["history_inputs"])
        self.outputs = tuple(self.manifest["history_outputs"])
        self.kept_names = tuple(self.manifest["kept_outputs"])
        self.inplace = frozenset(self.manifest.get("history_inplace", ()) if inplace else ())
        self.kept: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        import onnxruntime as ort

        # a copy: on CPU the OrtValue wraps the array, and in-place updates would write into
        # the shipped initial H
        self.state = [ort.OrtValue.ortvalue_from_numpy(np.array(self._init[n], copy=True,
                                                                order="C"), self.device, 0)
                      for n in self.inputs]

    def history(self) -> dict[str, np.ndarray]:
        """The current H (copied to the host)."""
        return {n: np.array(v.numpy(), copy=True) for n, v in zip(self.inputs, self.state)}

    def run(self, input_ids: Any) -> np.ndarray:
        ids = np.ascontiguousarray(np.asarray(input_ids, dtype=np.int64))
        if not MIN_SEQ <= ids.shape[1] <= int(self.manifest["max_len"]):
            raise ValueError(f"sequence length {ids.shape[1]} outside [{MIN_SEQ}, "
                             f"{self.manifest['max_len']}] supported by this artifact")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        for name, value in zip(self.inputs, self.state):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, out, value in zip(self.inputs, self.outputs, self.state):
            if name in self.inplace:
                binding.bind_ortvalue_output(out, value)
            else:
                binding.bind_output(out, self.device)
        for name in self.kept_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        n = len(self.outputs)
        # in-place histories keep their own OrtValue: on CPU it holds the numpy array that
        # owns the buffer, which the returned wrapper of the same buffer would not keep alive
        self.state = [value if name in self.inplace else new
                      for name, value, new in zip(self.inputs, self.state, values[1:1 + n])]
        self.kept = {k: v.numpy() for k, v in zip(self.kept_names, values[1 + n:])}
        logits: np.ndarray = values[0].numpy()
        return logits
