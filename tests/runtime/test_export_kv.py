"""KV-cache ONNX export (runtime/export.py's contract), on tiny random Llamas with GQA.

Exactness: ``max|onnx - ref| / max|ref| <= 1e-4`` for logits; greedy decoding (prefill,
then one token per step with the cache) must give the same tokens as HF transformers'
``generate(do_sample=False)`` on the dense model, and as greedy decoding WITHOUT cache of
the module-level pruned reference (``passes.reference.apply_plan_``) on random plans. A
left-padded batch decodes each row exactly as that prompt alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from tinymodels import TinyConfig, every_rule_plan, random_plan, tiny_llama, torch_threads

from prunec.compiler.plan import Plan
from prunec.passes.cache_io import cache_layout
from prunec.passes.reference import apply_plan_, reference_logits, relative_error, shape_of
from prunec.runtime.backends import CompileJob, graph_compile
from prunec.runtime.evaluate import onnx_logits, perplexity
from prunec.runtime.export import save_onnx
from prunec.runtime.generate import kv_manifest_path

STEPS = 32
QWEN_LIKE = TinyConfig(layers=3, heads=8, kv_heads=4, attention_bias=True, tied=False)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def compile_static(model: Any, plan: Plan, path: Path, **options: Any) -> Path:
    shape = shape_of(model)
    graph_compile(CompileJob(model, plan, shape, path, 18, None, **options))  # type: ignore[arg-type]
    return path


class Cached:
    """A cache graph in onnxruntime: prefill and decode steps by the artifact's contract."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.manifest = json.loads(kv_manifest_path(path).read_text())
        self.past_names = self.manifest["inputs"][3:]
        self.dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32

    def empty(self, batch: int) -> list[np.ndarray]:
        d = self.manifest["head_dim"]
        return [np.zeros((batch, h, 0, d), self.dtype)
                for h in self.manifest["kv_heads"] for _ in range(2)]

    def step(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                 **dict(zip(self.past_names, past))}
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def greedy(self, ids: np.ndarray, mask: np.ndarray, steps: int = STEPS) -> np.ndarray:
        logits, past = self.step(ids, mask, self.empty(ids.shape[0]))
        out = []
        for _ in range(steps):
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            out.append(token)
            mask = np.concatenate([mask, np.ones_like(token)], axis=1)
            logits, past = self.step(token, mask, past)
        return np.concatenate(out, axis=1)


def greedy_without_cache(model: Any, ids: torch.Tensor, steps: int = STEPS) -> np.ndarray:
    for _ in range(steps):
        token = reference_logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
    return ids[:, -steps:].numpy()


def layout_has_attention(plan: Plan) -> bool:
    return any(not lp.attn_removed for lp in plan.layers)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = tiny_llama(7, TinyConfig(layers=3))
    path = tmp_path_factory.mktemp("dense") / "model.onnx"
    with torch_threads(1):
        return model, compile_static(model, Plan.dense(shape_of(model)), path, kv_cache=True)


def test_cache_graph_contract_and_manifest(dense: tuple[Any, Path]) -> None:
    _, path = dense
    proto = onnx.load(str(path))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in proto.graph.input}
    assert inputs["attention_mask"] == ["batch", "total"]
    assert inputs["past_key_values.2.value"] == ["batch", 2, "past", 16]
    outputs = [o.name for o in proto.graph.output]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(3)
                                    for kv in ("key", "value")]
    manifest = json.loads(kv_manifest_path(path).read_text())
    assert manifest["layers"] == [0, 1, 2] and manifest["kv_heads"] == [2, 2, 2]
    assert manifest["inputs"] == [i.name for i in proto.graph.input]
    assert (manifest["context_length"], manifest["eos_token_id"]) == (512, 2)


def test_past_zero_equals_logits_graph_and_perplexity(dense: tuple[Any, Path],
                                                      tmp_path: Path) -> None:
    """eval/gates feed the cache graph at past 0 (``onnx_logits``): same perplexity as
    today's input_ids -> logits graph within 1e-5 relative; seq 1 runs too."""
    import onnxruntime as ort

    model, path = dense
    plain = compile_static(model, Plan.dense(shape_of(model)), tmp_path / "plain.onnx")
    assert [i.name for i in onnx.load(str(plain)).graph.input] == ["input_ids"]
    assert not kv_manifest_path(plain).exists()
    cached_fn, plain_fn = (onnx_logits(ort.InferenceSession(str(p), providers=[
        "CPUExecutionProvider"])) for p in (path, plain))
    data = torch.randint(0, 160, (6, 24), generator=torch.Generator().manual_seed(1))
    assert relative_error(cached_fn(data[:2, :1]), reference_logits(model, data[:2, :1])) < 1e-4
    a, b = perplexity(cached_fn, data).ppl, perplexity(plain_fn, data).ppl
    assert abs(a - b) / b <= 1e-5


def test_greedy_with_cache_equals_hf_generate(dense: tuple[Any, Path]) -> None:
    model, path = dense
    prompt = torch.randint(3, 160, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=STEPS, min_new_tokens=STEPS,
                              do_sample=False)[:, -STEPS:]
    got = Cached(path).greedy(prompt.numpy(), np.ones_like(prompt.numpy()))
    assert got.tolist() == want.tolist()
    assert len(set(got[0].tolist())) > 3, "a degenerate sequence would prove little"


def test_left_padded_batch_equals_each_prompt_alone(dense: tuple[Any, Path]) -> None:
    _, path = dense
    runner = Cached(path)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 160, (n,), generator=gen).numpy() for n in (9, 4, 6)]
    width = max(len(p) for p in prompts)
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    batch = runner.greedy(ids, mask, 12)
    for row, p in enumerate(prompts):
        alone = runner.greedy(p[None], np.ones((1, len(p)), np.int64), 12)
        assert batch[row].tolist() == alone[0].tolist(), row


@pytest.mark.parametrize(("seed", "fuse"), [(0, False), (1, True)], ids=["plain", "fused"])
def test_pruned_cache_graph_decodes_like_the_reference(seed: int, fuse: bool,
                                                       tmp_path: Path) -> None:
    """Random plans (removed attention = no cache for that layer, kept KV groups = a
    narrower cache) on a Qwen2-like model: cached greedy == uncached reference greedy,
    with plain ONNX ops and with onnxruntime's fused kernels."""
    model = tiny_llama(11 + seed, QWEN_LIKE)
    shape = shape_of(model)
    plan = random_plan(shape, seed, p_remove=0.3) if seed else every_rule_plan(shape)
    path = compile_static(model, plan, tmp_path / "model.onnx", kv_cache=True, fuse=fuse)
    if fuse:
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "MultiHeadAttention" in ops or not layout_has_attention(plan)
    layout = cache_layout(plan, shape)
    runner = Cached(path)
    assert runner.manifest["layers"] == [c.layer for c in layout.layers]
    assert runner.manifest["kv_heads"] == [c.kv_heads for c in layout.layers]
    assert len(runner.past_names) == 2 * len(layout.layers)
    prompt = torch.randint(3, 160, (2, 5), generator=torch.Generator().manual_seed(seed))
    ref = apply_plan_(copy.deepcopy(model), plan, shape)
    got = runner.greedy(prompt.numpy(), np.ones((2, 5), np.int64))
    assert got.tolist() == greedy_without_cache(ref, prompt).tolist()


def test_float16_export(dense: tuple[Any, Path], tmp_path: Path) -> None:
    """fp16 weights and cache, fp32 logits, on the CPU EP: logits within 2e-2 relative of
    fp32 (float16 has ~3 significant digits), the weights half the bytes."""
    model, path32 = dense
    path = compile_static(model, Plan.dense(shape_of(model)), tmp_path / "model.onnx",
                          kv_cache=True, dtype="float16")
    runner = Cached(path)
    assert runner.manifest["dtype"] == "float16"
    ids = torch.randint(0, 160, (2, 10), generator=torch.Generator().manual_seed(4)).numpy()
    logits, present = runner.step(ids, np.ones_like(ids), runner.empty(2))
    assert logits.dtype == np.float32 and present[0].dtype == np.float16
    want = reference_logits(model, torch.from_numpy(ids))
    assert relative_error(torch.from_numpy(logits), want) < 2e-2
    ratio = weight_bytes(path) / weight_bytes(path32)  # the graph's own bytes dominate a
    assert 0.49 < ratio < 0.51, ratio  # tiny file; for SmolLM2 the file itself halves
    assert next(model.parameters()).dtype == torch.float32, "the job's model is not modified"


def weight_bytes(path: Path) -> int:
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)


def test_save_onnx_writes_external_data_past_the_limit(dense: tuple[Any, Path],
                                                       tmp_path: Path) -> None:
    import onnxruntime as ort

    _, path = dense
    proto = onnx.load(str(path))
    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    assert not save_onnx(proto, small) and not (tmp_path / "small.onnx.data").exists()
    assert save_onnx(proto, big, limit=1024)
    data = tmp_path / "big.onnx.data"
    assert data.stat().st_size == weight_bytes(small)  # every weight moved to the .data
    assert big.stat().st_size < small.stat().st_size - data.stat().st_size + 4096
    runner = Cached.__new__(Cached)
    ids = np.arange(1, 7, dtype=np.int64)[None]
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (small, big)]
    runner.manifest = json.loads(kv_manifest_path(path).read_text())
    runner.past_names, runner.dtype = runner.manifest["inputs"][3:], np.float32
    results = []
    for session in outs:
        runner.session = session
        results.append(runner.step(ids, np.ones_like(ids), runner.empty(1))[0])
    np.testing.assert_array_equal(results[0], results[1])
