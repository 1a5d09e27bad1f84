"""runtime.generate: token choice, padding and text streaming (no model), then generation
with the KV cache on real tiny artifacts: greedy equals transformers' ``generate``, batches
equal prompts alone, seeded sampling, streaming and EOS."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import buildkit
import numpy as np
import pytest
import torch

from prunec.runtime.generate import (
    Generator,
    SamplingConfig,
    TextStream,
    choose_tokens,
    generate_text,
    left_pad,
    position_ids,
)

PROMPTS = ([12, 40, 7, 99, 23, 5, 61, 80, 33], [71, 2, 150], [9, 9, 14, 120, 3, 44])


@pytest.fixture(scope="module")
def dense(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dense tiny model built through the real build (static graph with the cache)."""
    from prunec.runtime.build import BuildOptions, build

    out = tmp_path_factory.mktemp("dense") / "artifact"
    build(buildkit.make_spec(tiny_dir), Path.cwd(), BuildOptions(out, quiet=True),
          {"static": buildkit.compile_fn()})
    return out


@pytest.fixture(scope="module")
def dense_gen(dense: Path) -> Generator:
    return Generator(dense / "model.onnx")


def greedy(n: int = 32) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n)


def hf_greedy(model_dir: Path, prompt: list[int], n: int, eos: tuple[int, ...]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), do_sample=False, max_new_tokens=n,
                             eos_token_id=list(eos), pad_token_id=eos[0])
    return [int(t) for t in out[0, len(prompt):]]


# --- no model ----------------------------------------------------------------------------

def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask)[:, -1].tolist() == [2, 0]


def test_tiny_top_p_is_greedy_and_a_seed_reproduces() -> None:
    logits = np.random.default_rng(0).normal(size=(6, 50)).astype(np.float32)
    nucleus = SamplingConfig(temperature=1.0, top_p=1e-9)
    rng = np.random.default_rng(1)
    assert choose_tokens(logits, nucleus, rng).tolist() == logits.argmax(-1).tolist()
    warm = SamplingConfig(temperature=2.0, top_p=1.0)
    draws = [choose_tokens(logits, warm, np.random.default_rng(7)).tolist() for _ in range(2)]
    assert draws[0] == draws[1] != logits.argmax(-1).tolist()


def test_top_p_draws_only_from_the_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    rng = np.random.default_rng(0)
    drawn = choose_tokens(logits, SamplingConfig(temperature=1.0, top_p=0.6), rng)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 < 0.6, so token 1 completes the nucleus
    assert abs((drawn == 0).mean() - 0.5 / 0.8) < 0.03
    everything = choose_tokens(logits, SamplingConfig(temperature=1.0), rng)
    assert set(everything.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(("config", "word"), [
    (SamplingConfig(max_new_tokens=0), "max_new_tokens"),
    (SamplingConfig(temperature=-0.1), "temperature"),
    (SamplingConfig(top_p=0.0), "top_p"), (SamplingConfig(top_p=1.01), "top_p"),
])
def test_sampling_config_problems(config: SamplingConfig, word: str) -> None:
    assert (config.problem() or ("", ""))[0] == word
    assert SamplingConfig().problem() is None


class _Bytes:
    """A tokenizer whose tokens are single UTF-8 bytes."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_split_characters() -> None:
    stream = TextStream(_Bytes(), list(b"hi "))
    pieces = [stream.push(b) for b in "é✓!".encode()]
    assert pieces == ["", "é", "", "", "✓", "!"]
    assert stream.flush() == "" and stream.continuation() == "é✓!"


# --- real artifacts ----------------------------------------------------------------------

def test_greedy_equals_transformers_generate(dense_gen: Generator, tiny_dir: Path) -> None:
    eos = dense_gen.manifest.eos
    for prompt in PROMPTS[:2]:
        got = dense_gen.generate([prompt], greedy()).tokens[0]
        assert list(got) == hf_greedy(tiny_dir, prompt, 32, eos)
    assert len(dense_gen.generate([PROMPTS[0]], greedy()).tokens[0]) == 32


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_batch_equals_each_prompt_alone(which: str, dense_gen: Generator, built: Any) -> None:
    gen = dense_gen if which == "dense" else Generator(built.artifact / "model.onnx")
    batch = gen.generate(PROMPTS, greedy(24))
    alone = [gen.generate([p], greedy(24)).tokens[0] for p in PROMPTS]
    assert list(batch.tokens) == alone
    assert batch.time_to_first_token_s > 0 and batch.decode_tokens_per_s > 0


def test_seeded_sampling_reproduces_and_tiny_top_p_is_greedy(dense_gen: Generator) -> None:
    warm = SamplingConfig(max_new_tokens=16, temperature=1.5, seed=3)
    first, again = (dense_gen.generate(PROMPTS, warm).tokens for _ in range(2))
    assert first == again
    assert dense_gen.generate(PROMPTS, dataclasses.replace(warm, seed=4)).tokens != first
    nucleus = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=1e-9, seed=5)
    assert dense_gen.generate(PROMPTS, nucleus).tokens == dense_gen.generate(
        PROMPTS, greedy(16)).tokens


def test_streaming_sees_every_token_and_eos_stops_each_sequence(dense_gen: Generator) -> None:
    reference = dense_gen.generate(PROMPTS, greedy(12)).tokens
    stop = reference[0][4]  # row 0 stops at its 5th token; the others at theirs, if ever
    steps: list[tuple[int | None, ...]] = []
    result = dense_gen.generate(PROMPTS, SamplingConfig(12, stop=(stop,)), steps.append)
    for row, (tokens, ref) in enumerate(zip(result.tokens, reference)):
        cut = ref.index(stop) + 1 if stop in ref else len(ref)
        assert tokens == ref[:cut]
        streamed = [s[row] for s in steps if s[row] is not None]
        assert streamed == list(tokens)
    assert len(result.tokens[0]) <= 5 and result.tokens[0][-1] == stop
    assert len(steps) == max(len(t) for t in result.tokens)
    assert all(s[0] is None for s in steps[len(result.tokens[0]):])  # finished: pad fed


def test_generate_text_streams_the_decoded_continuation(dense_gen: Generator,
                                                        tiny_tok: Any) -> None:
    pieces: dict[int, str] = {0: "", 1: ""}

    def on_text(row: int, text: str) -> None:
        pieces[row] += text

    prompts = ["In the beginning God created", "And the earth"]
    result = generate_text(dense_gen, tiny_tok, prompts, greedy(10), on_text)
    assert [pieces[0], pieces[1]] == list(result.texts)
    for prompt, tokens, text in zip(prompts, result.tokens, result.texts):
        ids = tiny_tok(prompt)["input_ids"]
        whole = tiny_tok.decode(ids + list(tokens), skip_special_tokens=True)
        assert whole == tiny_tok.decode(ids, skip_special_tokens=True) + text
