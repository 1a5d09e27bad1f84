"""Datasets: text files, JSON lines or a ``datasets.save_to_disk`` directory -> token sequences.

``load_dataset(decl, spec_dir, tokenizer)`` returns a ``torch.LongTensor [samples, seq_len]``
or raises ``CompileError`` with a diagnostic on the dataset's declaration.

Sampling, precisely:
1. the documents are read in a fixed order (paths and glob matches sorted by name; JSONL
   records and arrow rows in file order) and joined with a blank line (``"\\n\\n"``);
2. the text is tokenised once, without special tokens, into one token stream of N tokens;
3. ``slice [a, b)`` keeps tokens ``floor(a*N) .. floor(b*N)-1`` (default: all); disjoint
   slices of the same files therefore share no token;
4. the kept stream is cut into ``n = len // seq_len`` contiguous, non-overlapping chunks (the
   tail shorter than ``seq_len`` is dropped); ``n < samples`` is a diagnostic;
5. ``samples`` distinct chunks are chosen by a permutation seeded with ``seed``
   (``numpy.random.default_rng(seed)``) and returned in stream order.
The result depends only on the files, the tokenizer, the slice, ``samples``, ``seq_len`` and
``seed``. Tokenisation is cached in memory per (sha256 of the text, tokenizer fingerprint).

The ``hf-disk`` format reads the ``*.arrow`` files listed in the directory's ``state.json``
with ``pyarrow`` (an optional dependency: without it, a diagnostic says to install it);
the ``datasets`` package itself is not needed.

A build loads the datasets ``needed_datasets`` names (evaluated, the static method's score
dataset, the probe history's dataset) with ``load_spec_data``. On the command line
(``prunec eval ARTIFACT --data``, ``prunec run --data``) ``DataArgs`` describe a dataset the
same way and ``load_data_args`` reads it through the same ``load_dataset``; a ``.npy`` of
int token ids ``[sequences, seq_len]`` is taken as it is (its first ``samples`` rows).
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunec.compiler.checks import history_dataset
from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import DataFormat, DatasetDecl, SliceRange, Spec

_TOKEN_CACHE: dict[tuple[str, str], np.ndarray] = {}
SEPARATOR = "\n\n"


def _fail(decl: DatasetDecl, code: str, message: str, hint: str | None = None) -> CompileError:
    return CompileError((Diagnostic.error(code, f"dataset {decl.name}: {message}", decl.span,
                                          hint),))


# ---------------------------------------------------------------------- reading


def resolve_paths(decl: DatasetDecl, spec_dir: Path) -> list[Path]:
    """Files (or, for hf-disk, directories) named by ``decl.paths``; globs expanded, sorted."""
    found: list[Path] = []
    for pattern in decl.paths:
        full = str(spec_dir / Path(pattern).expanduser())
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else (
            [full] if Path(full).exists() else [])
        if not matches:
            raise _fail(decl, "P0302", f"no file matches {pattern!r} (relative to {spec_dir})")
        found += [Path(m) for m in matches]
    return found


def read_documents(decl: DatasetDecl, spec_dir: Path) -> list[str]:
    """The dataset's documents in their fixed order (see the module docstring)."""
    paths = resolve_paths(decl, spec_dir)
    reader = {DataFormat.TEXT: _read_text, DataFormat.JSONL: _read_jsonl,
              DataFormat.HF_DISK: _read_hf_disk}[decl.format]
    docs: list[str] = []
    for path in paths:
        docs += reader(decl, path)
    return docs


def _read_text(decl: DatasetDecl, path: Path) -> list[str]:
    if path.is_dir():
        raise _fail(decl, "P0302", f"{path} is a directory, not a text file")
    try:
        return [path.read_text(encoding="utf-8")]
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(decl, "P0302", f"cannot read {path} as UTF-8 text: {exc}") from exc


def _read_jsonl(decl: DatasetDecl, path: Path) -> list[str]:
    field = decl.field or "text"
    docs = []
    for n, line in enumerate(_read_text(decl, path)[0].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise _fail(decl, "P0302", f"{path}:{n}: not valid JSON ({exc})") from exc
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise _fail(decl, "P0302", f"{path}:{n}: no string field {field!r}",
                        "name the text field with `field`")
        docs.append(value)
    return docs


def _read_hf_disk(decl: DatasetDecl, path: Path) -> list[str]:
    try:
        from pyarrow import ipc
    except ModuleNotFoundError as exc:
        raise _fail(decl, "P0401", "reading a `datasets` save_to_disk directory needs pyarrow",
                    "pip install pyarrow (or convert the data to JSONL)") from exc
    field = decl.field or "text"
    docs: list[str] = []
    for arrow in _arrow_files(decl, path):
        with ipc.open_stream(str(arrow)) as reader:
            table = reader.read_all()
        if field not in table.column_names:
            raise _fail(decl, "P0302", f"{arrow} has no column {field!r} "
                        f"(columns: {', '.join(table.column_names)})")
        docs += [str(v) for v in table.column(field).to_pylist() if v is not None]
    return docs


def _arrow_files(decl: DatasetDecl, path: Path) -> list[Path]:
    state = path / "state.json"
    try:
        files = [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _fail(decl, "P0302", f"{path} is not a `datasets` save_to_disk directory "
                    "(no readable state.json)") from exc
    return files


# ------------------------------------------------------------------ tokenising


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{text}".encode()).hexdigest()


def token_stream(text: str, tokenizer: Any) -> np.ndarray:
    """The tokens of ``text`` (no special tokens), cached per (text hash, tokenizer)."""
    key = (hashlib.sha256(text.encode()).hexdigest(), tokenizer_fingerprint(tokenizer))
    if key not in _TOKEN_CACHE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[key] = np.asarray(ids, dtype=np.int64)
    return _TOKEN_CACHE[key]


# ------------------------------------------------------------------- sampling


def sample_chunks(stream: np.ndarray, decl: DatasetDecl) -> np.ndarray:
    """``decl.samples`` seeded chunks of ``decl.seq_len`` tokens from the stream's slice."""
    n = len(stream)
    lo, hi = (0, n) if decl.slice is None else (int(decl.slice.start * n),
                                                int(decl.slice.end * n))
    kept = stream[lo:hi]
    available = len(kept) // decl.seq_len
    if available < decl.samples:
        raise _fail(decl, "P0402", f"{len(kept)} tokens give only {available} sequences of "
                    f"{decl.seq_len}, {decl.samples} requested",
                    "add text, widen the slice, or lower samples / seq_len")
    order = np.random.default_rng(decl.seed).permutation(available)[: decl.samples]
    chosen = np.sort(order)
    chunks = kept[: available * decl.seq_len].reshape(available, decl.seq_len)
    return np.ascontiguousarray(chunks[chosen])


def load_dataset(decl: DatasetDecl, spec_dir: Path, tokenizer: Any) -> Any:
    """The dataset as a ``torch.LongTensor [samples, seq_len]`` (see the module docstring)."""
    import torch

    docs = read_documents(decl, spec_dir)
    stream = token_stream(SEPARATOR.join(docs), tokenizer)
    return torch.from_numpy(sample_chunks(stream, decl))


# ------------------------------------------------------------- a spec's datasets


def needed_datasets(spec: Spec) -> tuple[str, ...]:
    """The datasets a build reads: evaluated, the method's score set, the probe history's."""
    names = list(spec.eval_datasets())
    extra = [spec.score_dataset(), history_dataset(spec)]
    names += [n for n in extra if n and n not in names]
    return tuple(names)


def load_spec_data(spec: Spec, spec_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """Every dataset ``needed_datasets`` names, by name."""
    return {n: load_dataset(spec.dataset(n), spec_dir, tokenizer) for n in needed_datasets(spec)}


# -------------------------------------------------------------- the command line


@dataclass(frozen=True)
class DataArgs:
    """A dataset given on the command line (``--data FILE ... --seq-len L ...``)."""

    paths: tuple[str, ...]
    format: str = "text"  # text | jsonl
    field: str | None = None
    samples: int = 32
    seq_len: int = 256
    seed: int = 0
    slice: str | None = None  # "A:B", fractions of the token stream

    @property
    def token_ids(self) -> bool:
        """One ``.npy`` of token ids, taken as it is (no tokenizer, no sampling)."""
        return len(self.paths) == 1 and self.paths[0].endswith(".npy")


COMMAND_LINE = Span.unknown("<command line>")


def data_args_decl(args: DataArgs) -> DatasetDecl:
    """The ``DatasetDecl`` of ``args`` (P0403 for a bad --slice)."""
    cut = None
    if args.slice:
        try:
            a, b = (float(x) for x in args.slice.split(":"))
        except ValueError as exc:
            raise CompileError((Diagnostic.error(
                "P0403", f"--slice {args.slice!r} is not A:B", COMMAND_LINE),)) from exc
        if not 0 <= a < b <= 1:
            raise CompileError((Diagnostic.error(
                "P0403", "--slice needs 0 <= A < B <= 1", COMMAND_LINE),))
        cut = SliceRange(a, b, COMMAND_LINE)
    return DatasetDecl("data", DataFormat(args.format), args.paths, args.field, args.samples,
                       args.seq_len, args.seed, cut, COMMAND_LINE)


def load_data_args(args: DataArgs, tokenizer: Callable[[], Any]) -> Any:
    """``args``' data as a ``torch.LongTensor [samples, seq_len]``: a ``.npy`` of token ids
    as it is, else text through ``load_dataset`` (``tokenizer()`` is called only then)."""
    import torch

    if args.token_ids:
        return torch.from_numpy(load_token_ids(Path(args.paths[0]))[: args.samples])
    return load_dataset(data_args_decl(args), Path.cwd(), tokenizer())


def load_token_ids(path: Path) -> np.ndarray:
    """``[sequences, seq_len]`` int64 token ids from a ``.npy`` (P0302 when unreadable)."""
    try:
        ids = np.asarray(np.load(path), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise CompileError((Diagnostic.error(
            "P0302", f"cannot read token ids from {path}: {exc}", Span.unknown(str(path))),
        )) from exc
    if ids.ndim != 2:
        raise CompileError((Diagnostic.error(
            "P0302", f"{path} holds an array of shape {list(ids.shape)}; expected token ids "
            "[sequences, seq_len]", Span.unknown(str(path))),))
    return ids
