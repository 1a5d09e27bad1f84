"""Token-by-token generation with a KV-cache artifact on onnxruntime: the ``prunec.runtime``
generation API behind ``prunec generate``.

What it owns: left padding of a batch of prompts (``attention_mask`` 0 over the padding,
``position_ids`` counting each row's real tokens from 0, as Hugging Face's ``generate``
does), the decode loop, the choice of the next token (greedy, or temperature / top-p
sampling from a ``numpy`` Generator seeded by ``SamplingConfig.seed``: the same seed gives
the same tokens), stopping (per sequence at an EOS id, whose token is kept in the output;
finished sequences then feed the pad id until every sequence is done or
``max_new_tokens`` is reached), the per-step streaming callback and incremental text
decoding (``TextStream``), and the timings (time to first token; decode tokens/s).

The artifact's contract (written by ``runtime/export.py``; ``model.kv.json`` beside the
ONNX file says which layers have a cache, their KV heads, head_dim, dtype, EOS/pad ids and
the context length): inputs ``input_ids`` / ``position_ids`` int64 [batch, seq],
``attention_mask`` int64 [batch, past+seq], ``past_key_values.{i}.key|value``
[batch, kv_heads_i, past, head_dim]; outputs ``logits`` and ``present.{i}.key|value``
[batch, kv_heads_i, past+seq, head_dim]. Prefill runs at past 0; every later step feeds
one token per sequence.

A ``probe { mode = prompt }`` artifact (``runtime.prompt_mode``: its ``.gating.json`` says
so) runs through the same ``Generator``: the prefill graph gives the dense logits, its cache
and each sequence's kept sets; the first decode step gathers the kept weights once (so the
time to first token is the prefill's); every step runs the decode graph on them. Its prompts
must share one length (P0407): left padding would be probed as prompt tokens.

Device residency: the session runs with IOBinding. Each ``present.*`` is bound as an
output on the session's first provider's device (CUDA: ``cuda:0``) and the returned
OrtValues are bound as the next step's ``past_key_values.*``, so the cache never visits the
host between steps. Only the small int64 inputs go up and only the logits come down (the
next token is chosen on the host).

Allocation: in the concat convention the graph computes ``present = Concat(past, new)``,
so onnxruntime allocates every ``present`` afresh each step (past+1 positions) and copies
the past into it: per step one allocation per cached tensor and a copy of the whole cache,
O(n^2) bytes moved over n steps. onnxruntime's arena allocator (CPU and CUDA) recycles the
freed buffers, so this costs a memcpy, not a malloc. The runtime cannot avoid the copy:
only a graph whose attention writes into a shared past/present buffer (onnxruntime's
GroupQueryAttention with ``past_present_share_buffer``) can, and prunec's exporter does not
emit one (see ``runtime/export.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunec.compiler.diagnostics import user_error
from prunec.compiler.ir import MIN_SEQ, Provider
from prunec.compiler.names import kv_manifest_file

StepFn = Callable[[tuple[int | None, ...]], None]  # a step's token per sequence (None: done)
_DTYPES = {"float32": np.float32, "float16": np.float16}
_DEVICES = {"CUDAExecutionProvider": "cuda"}


@dataclass(frozen=True)
class SamplingConfig:
    """How to choose tokens: ``temperature`` 0 is greedy; otherwise sample from the
    softmax of logits / temperature restricted to the top-p nucleus. ``stop`` adds token ids
    that end a sequence like the model's EOS ids."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[int, ...] = ()

    def problem(self) -> tuple[str, str] | None:
        """(field, what is wrong with it) for an invalid configuration, else None."""
        for name, ok, rule in _RULES:
            value = getattr(self, name)
            if not ok(value):
                return name, f"must be {rule}, not {value}"
        return None


_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("temperature", lambda v: v >= 0, ">= 0 (0 is greedy)"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
)


@dataclass(frozen=True)
class KvManifest:
    """What ``model.kv.json`` tells a runtime: the cached layers (original indices), their
    KV heads, head_dim, the cache dtype, EOS and pad ids, and the context length."""

    layers: tuple[int, ...]
    kv_heads: tuple[int, ...]
    head_dim: int
    dtype: str
    eos: tuple[int, ...]
    pad: int
    context: int

    def past_names(self) -> tuple[str, ...]:
        return tuple(f"past_key_values.{i}.{kv}" for i in self.layers for kv in ("key", "value"))

    def present_names(self) -> tuple[str, ...]:
        return tuple(f"present.{i}.{kv}" for i in self.layers for kv in ("key", "value"))


def kv_manifest_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(kv_manifest_file(onnx_path.name))


def read_kv_manifest(onnx_path: Path) -> KvManifest:
    """The manifest beside ``onnx_path``; P0404 (with how to rebuild) when there is none."""
    path = kv_manifest_path(onnx_path)
    if not path.is_file():
        raise user_error("P0404", f"{onnx_path} has no KV cache ({path.name} is missing): it was "
                     "built with `kv_cache = off` or by an older prunec", str(onnx_path),
                     "rebuild it with `export onnx { kv_cache = on }` (the default)")
    try:
        return _parse_manifest(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise user_error("P0404", f"{path.name} is unreadable: {type(exc).__name__}: {exc}",
                     str(path), "rebuild the artifact") from exc


def _parse_manifest(data: dict[str, Any]) -> KvManifest:
    eos = data.get("eos_token_id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    pad = data.get("pad_token_id")
    return KvManifest(tuple(int(i) for i in data["layers"]),
                      tuple(int(h) for h in data["kv_heads"]), int(data["head_dim"]),
                      str(data["dtype"]), eos_ids,
                      int(pad) if pad is not None else (eos_ids[0] if eos_ids else 0),
                      int(data["context_length"]))


@dataclass(frozen=True)
class Generation:
    """One call's result: the new tokens of each prompt (up to and including its EOS), their
    text (when a tokenizer decoded them), and the timings. ``decode_tokens_per_s`` counts the
    tokens emitted after each sequence's first one, over the whole batch, per second of the
    decode steps (0.0 when there was no decode step)."""

    tokens: tuple[tuple[int, ...], ...]
    time_to_first_token_s: float
    decode_tokens_per_s: float
    texts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tokens": [list(t) for t in self.tokens], "texts": list(self.texts),
                "time_to_first_token_s": self.time_to_first_token_s,
                "decode_tokens_per_s": self.decode_tokens_per_s}


def left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [batch, longest], padding on the left.

    >>> ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
    return ids, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Each real token's position among its row's real tokens (padding gets 1, unused).

    >>> position_ids(np.array([[1, 1, 1], [0, 0, 1]])).tolist()
    [[0, 1, 2], [1, 1, 0]]
    """
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def choose_tokens(logits: np.ndarray, config: SamplingConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """The next token of each row of ``logits`` [batch, vocab]: argmax at temperature 0,
    else a draw from the top-p nucleus (the most probable tokens whose probabilities, before
    the last one, sum to less than ``top_p``; the top token is always in it)."""
    if config.temperature == 0:
        return np.asarray(logits.argmax(axis=-1), dtype=np.int64)
    z = logits.astype(np.float64) / config.temperature
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=-1)
    ranked = np.where(np.cumsum(ranked, axis=-1) - ranked < config.top_p, ranked, 0.0)
    cumulative = np.cumsum(ranked, axis=-1)
    draws = rng.random(len(logits))[:, None] * cumulative[:, -1:]
    picks = np.minimum((cumulative <= draws).sum(axis=-1), logits.shape[-1] - 1)
    return np.asarray(np.take_along_axis(order, picks[:, None], axis=-1)[:, 0], dtype=np.int64)


@dataclass
class _Batch:
    """The decode loop's state: the running mask and positions, who is done, the outputs."""

    mask: np.ndarray
    positions: np.ndarray  # [batch]: the position of each row's last fed token
    done: np.ndarray
    out: list[list[int]] = field(default_factory=list)

    def emit(self, tokens: np.ndarray, eos: tuple[int, ...]) -> tuple[int | None, ...]:
        step = tuple(None if d else int(t) for t, d in zip(tokens, self.done))
        for row, token in enumerate(step):
            if token is not None:
                self.out[row].append(token)
        self.done |= np.isin(tokens, eos)
        return step

    def advance(self) -> tuple[np.ndarray, np.ndarray]:
        """(attention_mask, position_ids) for feeding one more token per row."""
        self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), np.int64)], axis=1)
        self.positions = self.positions + 1
        return self.mask, self.positions[:, None]


class Generator:
    """An artifact's ONNX session ready to decode with its KV cache (see the module
    docstring). ``open`` raises CompileError (P0404) for an artifact without a cache."""

    def __init__(self, onnx_path: Path, providers: Sequence[Provider] = (Provider.CPU,)) -> None:
        from prunec.runtime.session import open_session

        self.prompt = _prompt_session(onnx_path, providers)
        self.path = onnx_path
        self.manifest = read_kv_manifest(onnx_path)
        self.session = open_session(onnx_path, providers) if self.prompt is None \
            else self.prompt.opened["prefill"]
        ort_session = self.session.session
        self.inputs = frozenset(i.name for i in ort_session.get_inputs())
        self.device = _DEVICES.get(self.session.used[0], "cpu")

    def generate(self, prompts: Sequence[Sequence[int]], config: SamplingConfig,
                 on_step: StepFn | None = None) -> Generation:
        """New tokens for each prompt (token ids, left-padded into one batch); ValueError for
        an invalid ``config``."""
        if (bad := config.problem()) is not None:
            raise ValueError(f"SamplingConfig.{bad[0]} {bad[1]}")
        steps = self._budget(prompts, config)
        rng = np.random.default_rng(config.seed)
        start = time.perf_counter()
        ids, mask = left_pad(prompts, self.manifest.pad)
        positions = position_ids(mask)
        logits, cache = self._prefill(ids, mask, positions)
        batch = _Batch(mask, positions[:, -1].copy(), np.zeros(len(prompts), bool),
                       [[] for _ in prompts])
        eos = self.manifest.eos + config.stop
        tokens = self._emit(batch, choose_tokens(logits, config, rng), eos, on_step)
        first = time.perf_counter()
        for _ in range(steps - 1):
            if batch.done.all():
                break
            fed = np.where(batch.done, self.manifest.pad, tokens)[:, None]
            logits, cache = self._step(fed, *batch.advance(), cache)
            tokens = self._emit(batch, choose_tokens(logits, config, rng), eos, on_step)
        decoded = sum(max(len(o) - 1, 0) for o in batch.out)
        seconds = time.perf_counter() - first
        return Generation(tuple(tuple(o) for o in batch.out), first - start,
                          decoded / seconds if decoded and seconds > 0 else 0.0)

    def _budget(self, prompts: Sequence[Sequence[int]], config: SamplingConfig) -> int:
        """How many tokens to generate: ``max_new_tokens`` within the context (P0407 for an
        empty batch, an empty prompt or one that fills the context)."""
        where = str(self.path)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise user_error("P0407", "a prompt is empty (no tokens to start from)", where)
        longest, context = max(len(p) for p in prompts), self.manifest.context
        if longest >= context:
            raise user_error("P0407", f"a prompt of {longest} tokens leaves no room in the "
                         f"model's context of {context} tokens", where,
                         f"shorten the prompt to at most {context - 1} tokens")
        return min(config.max_new_tokens, context - longest)

    @staticmethod
    def _emit(batch: _Batch, tokens: np.ndarray, eos: tuple[int, ...],
              on_step: StepFn | None) -> np.ndarray:
        step = batch.emit(tokens, eos)
        if on_step is not None:
            on_step(step)
        return tokens

    def _prefill(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray
                 ) -> tuple[np.ndarray, Any]:
        """The prompts' forward: (last logits, the decode state). A prompt-mode artifact
        (P0407 for prompts of different lengths) scores its kept sets here."""
        if self.prompt is None:
            return self._run(ids, mask, positions, self._empty_cache(len(ids)))
        if not mask.all():
            raise user_error("P0407", "a probe mode = prompt artifact probes each prompt "
                             "whole, so one batch needs prompts of one length (left padding "
                             "would be scored)", str(self.path),
                             "generate prompts of different lengths in separate calls")
        if ids.shape[1] < MIN_SEQ:
            raise user_error("P0407", f"a probe mode = prompt artifact probes at least "
                             f"{MIN_SEQ} prompt tokens; this prompt has {ids.shape[1]}",
                             str(self.path), "give a longer prompt")
        logits, state = self.prompt.prefill(ids)
        return logits[:, -1], state

    def _step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, state: Any
              ) -> tuple[np.ndarray, Any]:
        """One decode step: (last logits, the new state); prompt mode gathers its kept
        weights on the first step (after the first token: TTFT is the prefill's)."""
        if self.prompt is None:
            return self._run(ids, mask, positions, state)
        return self.prompt.decode(ids, positions, state)[:, -1], state

    def _empty_cache(self, batch: int) -> list[Any]:
        import onnxruntime as ort

        dtype = _DTYPES[self.manifest.dtype]
        return [ort.OrtValue.ortvalue_from_shape_and_type(
            [batch, heads, 0, self.manifest.head_dim], dtype, self.device, 0)
            for heads in self.manifest.kv_heads for _ in ("key", "value")]

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One forward: (last position's logits [batch, vocab] on the host, the presents as
        OrtValues on the device)."""
        io = self.session.session.io_binding()
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for name, value in feeds.items():
            if name in self.inputs:
                io.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, past in zip(self.manifest.past_names(), cache):
            io.bind_ortvalue_input(name, past)
        io.bind_output("logits", "cpu")
        for name in self.manifest.present_names():
            io.bind_output(name, self.device, 0)
        self.session.session.run_with_iobinding(io)
        outputs = io.get_outputs()
        return outputs[0].numpy()[:, -1, :], list(outputs[1:])


def _prompt_session(onnx_path: Path, providers: Sequence[Provider]) -> Any:
    """The ``runtime.prompt_mode.PromptSession`` of a prompt-mode artifact, None for a static
    one; P0404 for a per-batch gated graph (no KV cache)."""
    from prunec.runtime.prompt_mode import PromptSession, is_prompt_mode

    gating = onnx_path.with_suffix(".gating.json")
    if not gating.is_file():
        return None
    if not is_prompt_mode(json.loads(gating.read_text())):
        raise user_error("P0404", f"{onnx_path} is a gated (probe) graph, which has no KV "
                         "cache; generation needs a static or a probe mode = prompt artifact",
                         str(onnx_path), "build a static artifact (a spec without a `probe` "
                         "block) or one with `probe { mode = prompt }`")
    return PromptSession(onnx_path, providers)


class TextStream:
    """Incremental detokenisation of one sequence: ``push(token)`` returns the text that
    token completes. Text is decoded with the prompt in front and cut after the prompt's
    own text, so a token's leading space survives (SentencePiece drops it at the start of a
    decode). A multi-byte character split over tokens decodes to U+FFFD until its last byte
    comes, so text ending in U+FFFD is held back; ``flush`` returns whatever is left."""

    def __init__(self, tokenizer: Any, prompt: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt)
        self.start = self.shown = len(self._text())

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._text()
        return "" if text.endswith("\ufffd") else self._take(text)

    def flush(self) -> str:
        return self._take(self._text())

    def continuation(self) -> str:
        """All the text after the prompt's."""
        return self._text()[self.start:]

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _take(self, text: str) -> str:
        new, self.shown = text[self.shown:], max(self.shown, len(text))
        return new


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids; with ``chat``, wrapped as one user turn by the tokenizer's
    chat template (P0407 for an empty prompt or a tokenizer without a template)."""
    if not prompt.strip():
        raise user_error("P0407", "the prompt is empty", "<prompt>", "give some text to continue")
    if not chat:
        return list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise user_error("P0407", "--chat needs a chat template, and this artifact's tokenizer "
                     "has none", "<prompt>", "run without --chat")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


TextFn = Callable[[int, str], None]  # (prompt index, the new text of that sequence)


def generate_text(generator: Generator, tokenizer: Any, prompts: Sequence[str],
                  config: SamplingConfig, on_text: TextFn | None = None,
                  chat: bool = False) -> Generation:
    """``Generator.generate`` on text prompts: ``on_text`` receives each sequence's new text
    as its tokens complete it; the result carries the decoded continuations."""
    ids = [encode_prompt(tokenizer, p, chat) for p in prompts]
    streams = [TextStream(tokenizer, i) for i in ids]

    def step(tokens: tuple[int | None, ...]) -> None:
        for row, token in enumerate(tokens):
            piece = streams[row].push(token) if token is not None else ""
            if piece and on_text is not None:
                on_text(row, piece)

    result = generator.generate(ids, config, step)
    for row, stream in enumerate(streams):
        if (rest := stream.flush()) and on_text is not None:
            on_text(row, rest)
    texts = tuple(s.continuation() for s in streams)
    return Generation(result.tokens, result.time_to_first_token_s,
                      result.decode_tokens_per_s, texts)
