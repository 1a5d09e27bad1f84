"""``mode = prompt`` (passes/probe/prompt.py) against HF's own modules, on tiny models with
biases: prefill logits are the dense model's; decode logits equal HF decoding with the KV
cache of the dense prefill on a copy whose skipped units (the kept sets the runner recorded
for that sequence) are zeroed; kept sets are per sequence and read the prompt only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_probe_biases import MAX_LEN, hf_model, zeroed
from torch import nn

from prunec.compiler.ir import KeptScope, ProbeMode
from prunec.passes.probe import PromptRunner, calibrate_history
from prunec.passes.reference import relative_error, shape_of

TOL = 1e-4
B, T, P = 3, 30, 12


def ids(seed: int, b: int = B, t: int = T) -> torch.Tensor:
    return torch.randint(0, 160, (b, t), generator=torch.Generator().manual_seed(seed))


def runner(model: nn.Module, calib: torch.Tensor, make_policy: Any, compensate: bool = False,
           oracle: bool = False, kept: KeptScope = KeptScope.PER_SEQUENCE,
           samples: float = 0.05) -> PromptRunner:
    policy = make_policy(0.4, ProbeMode.PROMPT, compensate=compensate, kept=kept,
                         sample_fraction=samples)
    hist = calibrate_history(model, shape_of(model), policy, calib, max_len=MAX_LEN)
    return PromptRunner(model, shape_of(model), policy, hist, oracle=oracle)


def hf_decode(model: nn.Module, seq: torch.Tensor, kept: dict[str, list[int]]) -> torch.Tensor:
    """Dense HF prefill of ``seq[:, :P]`` with its cache, then the continuation on a copy with
    the skipped units zeroed: logits of positions P .. T-1."""
    with torch.no_grad():
        cache = model(input_ids=seq[:, :P], use_cache=True).cache
        pruned = zeroed(model, kept, model.config.head_dim)
        out = pruned(input_ids=seq[:, P:], cache=cache, use_cache=True)
    return out.logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["llama-all-bias", "qwen2"])
def test_prefill_dense_and_decode_equal_hf_with_the_cache(kind: str, calib_ids: torch.Tensor,
                                                          make_policy: Any) -> None:
    model = hf_model(kind)
    assert_prefill_dense_decode_zeroed(model, runner(model, calib_ids, make_policy), ids(1))


def assert_prefill_dense_decode_zeroed(model: nn.Module, run: PromptRunner,
                                       batch: torch.Tensor) -> None:
    """``run``'s logits on ``batch`` (prompt ``P``) are the HF model's at the prompt and, per
    sequence, HF decoding from the dense cache with that sequence's skipped units zeroed."""
    logits = run.run(batch, P)
    with torch.no_grad():
        dense = model(input_ids=batch, use_cache=False).logits
    assert relative_error(logits[:, :P], dense[:, :P]) <= TOL
    assert relative_error(logits[:, P:], dense[:, P:]) > 1e-2  # decode is pruned
    names = run.gated.history_names
    for s in range(batch.shape[0]):
        kept = {n: k[s if k.shape[0] > 1 else 0].tolist()  # [1, keep]: per batch
                for n, k in zip(names, run.last_kept)}
        assert relative_error(logits[s:s + 1, P:], hf_decode(model, batch[s:s + 1], kept)) <= TOL


def test_kept_sets_are_per_sequence_and_read_only_the_prompt(calib_ids: torch.Tensor,
                                                             make_policy: Any) -> None:
    model = hf_model("llama-attention-bias")
    run = runner(model, calib_ids, make_policy)
    batch = ids(2)
    logits = run.run(batch, P)
    together = [k.clone() for k in run.last_kept]
    assert any(not torch.equal(k[0], k[1]) for k in together)  # sequences choose differently
    other = batch.clone()
    other[:, P:] = ids(9)[:, P:]  # another continuation, the same prompts
    run.run(other, P)
    assert all(torch.equal(a, b) for a, b in zip(together, run.last_kept))
    alone = run.run(batch[1:2], P)  # a sequence alone: its own kept sets and logits
    assert all(torch.equal(a[1], b[0]) for a, b in zip(together, run.last_kept))
    assert relative_error(alone, logits[1:2]) <= TOL


def test_per_batch_one_kept_set_probed_on_the_whole_batch(calib_ids: torch.Tensor,
                                                          make_policy: Any) -> None:
    """``kept = per-batch``: one kept set ``[1, keep]`` per block, HF-exact as above with that
    set zeroed in every sequence; it depends on every probed prompt (samples 100%), and a
    batch of one sequence gets the per-sequence set."""
    model = hf_model("llama-all-bias")
    batch = ids(6)
    run = runner(model, calib_ids, make_policy, kept=KeptScope.PER_BATCH, samples=1.0)
    assert_prefill_dense_decode_zeroed(model, run, batch)
    shared = [k.clone() for k in run.last_kept]
    assert all(k.shape[0] == 1 for k in shared)
    other = batch.clone()
    other[2, :P] = ids(10)[2, :P]  # the last sequence's prompt only
    run.run(other, P)
    assert any(not torch.equal(a, b) for a, b in zip(shared, run.last_kept))
    alone = runner(model, calib_ids, make_policy)
    run.run(batch[1:2], P)
    alone.run(batch[1:2], P)
    assert all(torch.equal(a, b) for a, b in zip(run.last_kept, alone.last_kept))


def test_compensate_changes_decode_not_prefill(calib_ids: torch.Tensor,
                                               make_policy: Any) -> None:
    model = hf_model("llama")
    batch = ids(3)
    plain = runner(model, calib_ids, make_policy).run(batch, P)
    comp = runner(model, calib_ids, make_policy, compensate=True).run(batch, P)
    assert relative_error(comp[:, :P], plain[:, :P]) <= TOL
    assert relative_error(comp[:, P:], plain[:, P:]) > 1e-3


def test_oracle_scores_the_continuation_too(calib_ids: torch.Tensor, make_policy: Any) -> None:
    model = hf_model("llama")
    batch = ids(4)
    oracle = runner(model, calib_ids, make_policy, oracle=True)
    oracle.run(batch, P)
    first = [k.clone() for k in oracle.last_kept]
    other = batch.clone()
    other[:, P:] = ids(8)[:, P:]
    oracle.run(other, P)
    assert any(not torch.equal(a, b) for a, b in zip(first, oracle.last_kept))


@pytest.mark.parametrize("p,t", [(1, 20), (20, 20), (5, MAX_LEN + 1)])
def test_prompt_outside_the_range_is_refused(p: int, t: int, calib_ids: torch.Tensor,
                                             make_policy: Any) -> None:
    run = runner(hf_model("llama"), calib_ids, make_policy)
    with pytest.raises(ValueError, match="prompt"):
        run.run(ids(5, 1, t), p)
