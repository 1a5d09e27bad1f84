"""Perplexity of a PyTorch module or an ONNX artifact on a token dataset.

Definition (the same for both backends, and the one MultiPruner scores with): for a sequence
x_0 .. x_{T-1}, the model's logits at position t predict x_{t+1}; the sequence's NLL is the
mean over t = 0 .. T-2 of -log softmax(logits_t)[x_{t+1}] (T-1 predictions); the dataset's
perplexity is exp(mean over sequences of the sequence NLL). Continuation perplexity
(``prompt_len = P``, ``prunec eval --prompt-len``): the same mean over t = P-1 .. T-2 only,
the NLL of tokens P .. T-1 given tokens 0 .. P-1 (``sequence_nll`` of the logits and ids from
position P-1 on: one definition for both); ``P = 0`` (the default) scores every prediction. Log-softmax runs in float32 on
the logits, the means accumulate in float64 (``prunec.passes.reference.sequence_nll``, which
the static search scores with too). No BOS is added and no token is masked: every
sequence is a full ``seq_len`` chunk (see ``prunec.runtime.data``).

Both backends go through ``perplexity(logits_fn, data)``: the PyTorch path calls the module
under ``torch.no_grad``; the ONNX path feeds ``input_ids`` (int64 [batch, seq]) to the
session (a KV-cache graph also gets a full attention_mask, positions and empty pasts: past
length 0 gives the same logits) and reads ``logits``, then scores with the very same torch
code.

Progress bars go to stderr and are shown only on a terminal and without ``--quiet``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prunec.passes.reference import sequence_nll

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    mean_nll: float
    sequences: int
    tokens: int  # predicted tokens: sequences * (seq_len - max(prompt_len, 1))
    seconds: float

    def to_json(self) -> dict[str, float | int]:
        return {"ppl": self.ppl, "mean_nll": self.mean_nll, "sequences": self.sequences,
                "tokens": self.tokens, "seconds": round(self.seconds, 3)}


def perplexity(logits_fn: LogitsFn, data: torch.Tensor, batch_size: int = 4,
               progress: Any = None, label: str = "perplexity",
               prompt_len: int = 0) -> Perplexity:
    """exp(mean sequence NLL) of ``logits_fn`` over ``data`` [samples, seq_len]; with
    ``prompt_len`` P > 0, of the continuation P .. seq_len-1 only."""
    if data.dim() != 2 or data.shape[1] < 2:
        raise ValueError(f"data must be [samples, seq_len >= 2], got {tuple(data.shape)}")
    if not 0 <= prompt_len < data.shape[1]:
        raise ValueError(f"prompt_len {prompt_len} outside [0, {data.shape[1] - 1}]")
    first = max(prompt_len, 1) - 1  # the position whose logits predict the first scored token
    start = time.perf_counter()
    task = progress.add_task(label, total=data.shape[0]) if progress is not None else None
    nlls = []
    for i in range(0, data.shape[0], batch_size):
        batch = data[i:i + batch_size]
        nlls.append(sequence_nll(logits_fn(batch)[:, first:], batch[:, first:]))
        if progress is not None:
            progress.advance(task, batch.shape[0])
    if progress is not None:
        progress.remove_task(task)
    mean = float(torch.cat(nlls).mean())
    return Perplexity(math.exp(mean), mean, int(data.shape[0]),
                      int(data.shape[0] * (data.shape[1] - 1 - first)),
                      time.perf_counter() - start)


def torch_logits(model: Any) -> LogitsFn:
    """Logits of a HF causal LM (no KV cache, no gradients), as float32 on the CPU; the batch
    runs on the model's device."""
    from prunec.passes.device import on_model

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=on_model(model, batch), use_cache=False).logits
            return logits.float().cpu()  # type: ignore[no-any-return]

    return run


def onnx_logits(session: Any) -> LogitsFn:
    """Logits of an ONNX causal LM session (input ``input_ids``, output ``logits``). A
    KV-cache graph runs at past 0 with a full ``attention_mask`` (``prefill_feeds``)."""
    output = "logits" if "logits" in [o.name for o in session.get_outputs()] else None
    inputs = session.get_inputs()

    def run(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([output] if output else None, prefill_feeds(inputs, batch))[:1]
        return torch.from_numpy(logits)

    return run


def prefill_feeds(inputs: Any, batch: torch.Tensor) -> dict[str, Any]:
    """The feeds of one whole-sequence call: ``input_ids``, and for a cache graph (see
    ``runtime.export``) an all-ones mask, positions 0..seq-1 and empty pasts."""
    import numpy as np

    ids = batch.numpy().astype("int64")
    feeds: dict[str, Any] = {"input_ids": ids}
    b, s = ids.shape
    for arg in inputs:
        if arg.name == "attention_mask":
            feeds[arg.name] = np.ones((b, s), dtype=np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
        elif arg.name.startswith("past_key_values."):
            dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
            feeds[arg.name] = np.zeros((b, arg.shape[1], 0, arg.shape[3]), dtype=dtype)
    return feeds


def make_progress(quiet: bool = False) -> Any:
    """A rich Progress on stderr; disabled when quiet or when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=True, disable=quiet or not console.is_terminal)
