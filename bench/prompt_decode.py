"""Decode speed of ``probe { mode = prompt }`` artifacts vs the dense KV-cache artifact (ORT).

Artifacts, each built by ``prunec build`` from a spec written here (``model demo``, no
evaluation): the dense model with the KV cache, fused (``fuse = on``, the default) and plain
(``fuse = off``: the graph style of the prompt-mode graphs, which are not fused), and
``mode = prompt`` at each ``--ratios`` (the ``specs/smollm2-prompt-gating.prune`` policy:
MLP and heads, first 3 layers skipped, ``tokens = 50%``, ``round = 64``, compensation on;
H calibrated on ``--calib-samples`` x 256 tokens of ``specs/data/kjv-calib.txt``;
``max_len`` = prompt + new tokens).

Timing (``runtime.generate.Generator``, the runtime of ``prunec generate``): prompts are
``--prompt-len``-token windows of ``specs/data/kjv-eval.txt`` (batch b: the first b
windows, one length: prompt mode takes no padding); greedy, ``--new-tokens`` every run (EOS
ignored). Time to first token = the prefill (prompt mode: the dense prefill with its probe,
TopK and kept sets); decode tokens/s counts the gather (once per request, on the first
decode step) in the decode time. Each repeat runs every artifact once per batch size,
round-robin; medians over ``--repeats`` after one warm-up run per artifact and batch.

Bound (``generation.weight_bytes``: initializer bytes a decoded token reads, a table read
only by Gather counting one row): dense = the dense graph's; prompt mode = the decode
graph's initializers plus the gathered weights (``w.*`` inputs, from the manifest). With
per-sequence kept sets one decode step at batch b reads b copies of the gathered weights
(bound = dense / (decode initializers + b x gathered)); with ``kept = per-batch`` one copy.

``matmul_chain``: a memory-bound chain of SmolLM2 MLP-sized MatMuls at batch 1 with the
weights as initializers, plain inputs and batched inputs: what the decode graph's
gathered-weights-as-inputs form costs per byte against the prepacked initializers of a
static graph.

Run: ``python bench/prompt_decode.py [--ratios 0.2,0.4,0.5] [--batch-ratios 0.4]
[--plain-ratios 0.4]
[--batches 1,4] [--prompt-len
128] [--new-tokens 128] [--repeats 5] [--calib-samples 32] [--workdir DIR] [--out FILE]``;
writes ``bench/results/prompt_decode.json`` with the machine (``bench/machine.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
from generation import CALIB, cached_run, open_generator, prompts, weight_bytes

RESULTS = Path(__file__).parent / "results" / "prompt_decode.json"
DENSE = {"dense-fused": "on", "dense-plain": "off"}


@dataclass(frozen=True)
class Settings:
    ratios: tuple[float, ...]
    batch_ratios: tuple[float, ...]  # kept = per-batch artifacts
    plain_ratios: tuple[float, ...]  # fuse = off artifacts
    batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    repeats: int
    calib_samples: int
    provider: str


def spec_text(name: str, s: Settings) -> str:
    """The spec of artifact ``name`` (``dense-*`` or ``prompt-NN``)."""
    if name in DENSE:
        return f'name = "{name}"\nmodel demo\nexport onnx "model.onnx" {{ fuse = {DENSE[name]} }}\n'
    ratio = int(name.removeprefix("prompt-").removesuffix("-batch").removesuffix("-plain"))
    per_batch = "  kept = per-batch\n  samples = 100%\n" if name.endswith("-batch") else ""
    fuse = ", fuse = off" if name.endswith("-plain") else ""
    return (f'name = "{name}"\nmodel demo\n'
            f'dataset calib text "{CALIB}" {{ samples = {s.calib_samples}, seq_len = 256 }}\n'
            f"probe {{\n  ratio = {ratio}%\n  targets = [mlp, heads]\n  skip = [layers[0..2]]\n"
            "  mode = prompt\n  tokens = 50%\n  history = calib\n  metric = ppsp\n"
            f"  round = 64\n  compensate = on\n{per_batch}}}\n"
            f'export onnx "model.onnx" {{ gating = on{fuse}, max_len = '
            f"{max(256, s.prompt_len + s.new_tokens)} }}\n")


def build(name: str, workdir: Path, s: Settings) -> Path:
    from prunec.runtime.cli import main

    out = workdir / name
    if not (out / "model.onnx").is_file():
        spec = workdir / f"{name}.prune"
        spec.write_text(spec_text(name, s))
        if main(["build", str(spec), "-o", str(out), "-q"]) != 0:
            raise SystemExit(f"building {spec} failed")
    return out


def gathered_bytes(path: Path, batch: int) -> int:
    """Bytes of the gathered weights (the decode graph's ``w.*`` inputs) one step reads at
    ``batch``: one copy per sequence where they have a ``batch`` dim, else one."""
    manifest = json.loads((path / "model.gating.json").read_text())
    total = 0
    for v in manifest["graphs"]["decode"]["inputs"]:
        if v["name"].startswith("w."):
            shape = v["shape"]
            copies = batch if shape and shape[0] == "batch" else 1
            dims = shape[1:] if shape and shape[0] == "batch" else shape
            total += copies * int(np.prod(dims)) * np.dtype(v["dtype"]).itemsize
    return total


def bytes_per_step(path: Path, batch: int) -> int:
    """Weight bytes one decode step reads at ``batch`` (see the module docstring)."""
    decode = path / "model.decode.onnx"
    if not decode.is_file():
        return weight_bytes(path / "model.onnx")[1]
    return weight_bytes(decode)[1] + gathered_bytes(path, batch)


def time_all(gens: dict[str, Any], texts: list[list[int]], s: Settings
             ) -> dict[tuple[str, int], list[tuple[float, float, list[int]]]]:
    samples: dict[tuple[str, int], list[tuple[float, float, list[int]]]] = defaultdict(list)
    for b in s.batches:
        for gen in gens.values():
            cached_run(gen, texts[:b], 2)  # warm-up
        for _ in range(s.repeats):
            for name, gen in gens.items():
                samples[(name, b)].append(cached_run(gen, texts[:b], s.new_tokens))
    return samples


def rows(samples: dict[tuple[str, int], list[tuple[float, float, list[int]]]],
         paths: dict[str, Path]) -> list[dict[str, Any]]:
    """Medians, and for prompt mode the ratios to dense-fused and dense-plain."""
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for k, v in samples.items()}
    out = []
    for (name, b), (ttft, tok_s) in med.items():
        row: dict[str, Any] = {"artifact": name, "batch": b, "ttft_ms": ttft * 1e3,
                               "decode_tok_s": tok_s, "runs": len(samples[(name, b)]),
                               "weight_bytes_per_step": bytes_per_step(paths[name], b)}
        for dense in (d for d in DENSE if name.startswith("prompt") and (d, b) in med):
            row[f"decode_speedup_vs_{dense}"] = tok_s / med[(dense, b)][1]
            row[f"ttft_ratio_vs_{dense}"] = ttft / med[(dense, b)][0]
            row[f"bound_vs_{dense}"] = bytes_per_step(paths[dense], b) / row[
                "weight_bytes_per_step"]
        out.append(row)
    return out


def matmul_chain(d: int = 576, c: int = 1536, pairs: int = 40, reps: int = 9,
                 calls: int = 5) -> dict[str, Any]:
    """A chain of ``2 * pairs`` SmolLM2 MLP-sized MatMuls at batch 1 (``[1, d] x [d, c]``, then
    ``[1, c] x [c, d]``; 283 MB of float32 weights at the defaults, more than the CPU's caches,
    so each call streams every weight from memory as a decode step does) on onnxruntime CPU,
    with the weights as initializers (prepacked at session creation), as plain inputs, and as
    batched ``[1, ., .]`` inputs (the decode graph's form), interleaved. Median ms per chain
    and GB/s of weights read: what feeding gathered weights as inputs costs per byte."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((d, c) if i % 2 == 0 else (c, d)) * 0.03).astype(np.float32)
          for i in range(2 * pairs)]

    def session(kind: str) -> tuple[Any, dict[str, Any]]:
        lead = [1] if kind == "batched" else []
        inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, d])]
        inits, nodes, feeds = [], [], {"x0": np.ones((1, d), np.float32)}
        for i, w in enumerate(ws):
            nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]))
            if kind == "initializer":
                inits.append(numpy_helper.from_array(w, f"w{i}"))
                continue
            inputs.append(helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT,
                                                        [*lead, *w.shape]))
            feeds[f"w{i}"] = w.reshape(*lead, *w.shape)
        out = helper.make_tensor_value_info(f"x{len(ws)}", TensorProto.FLOAT, None)
        graph = helper.make_graph(nodes, kind, inputs, [out], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess, {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}

    runs = {k: session(k) for k in ("initializer", "input", "batched")}
    times: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps + 1):  # the first round is a warm-up
        for kind, (sess, feeds) in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                sess.run_with_ort_values(None, feeds)
            if rep:
                times[kind].append((time.perf_counter() - start) / calls * 1e3)
    total = sum(w.nbytes for w in ws)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"weight_bytes": total, "ms": ms, "gb_s": {k: total / v / 1e6 for k, v in ms.items()}}


def run(s: Settings, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    run_on = machine.start()
    names = [*DENSE, *(f"prompt-{round(r * 100)}" for r in s.ratios),
             *(f"prompt-{round(r * 100)}-batch" for r in s.batch_ratios),
             *(f"prompt-{round(r * 100)}-plain" for r in s.plain_ratios)]
    paths = {n: build(n, workdir, s) for n in names}
    tokenizer = AutoTokenizer.from_pretrained(str(paths["dense-fused"]))
    texts = prompts(tokenizer, s.prompt_len, max(s.batches))
    gens = {n: open_generator(p, s.provider) for n, p in paths.items()}
    start = time.perf_counter()
    samples = time_all(gens, texts, s)
    files = {n: sum(f.stat().st_size for f in p.glob("model*.onnx*")) for n, p in paths.items()}
    return {"benchmark": "prompt_decode", "model": "SmolLM2-135M-Instruct",
            "settings": asdict(s), "machine": run_on.entry(), "onnx_bytes": files,
            "timing_s": time.perf_counter() - start, "rows": rows(samples, paths),
            "matmul_chain": matmul_chain()}


def numbers(text: str, kind: type) -> tuple[Any, ...]:
    return tuple(kind(x) for x in text.split(",") if x.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--ratios", default="0.2,0.4,0.5")
    p.add_argument("--batch-ratios", default="0.4", help="kept = per-batch artifacts")
    p.add_argument("--plain-ratios", default="0.4", help="fuse = off prompt-mode artifacts")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calib-samples", type=int, default=32, help="H calibration, x256 tokens")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workdir", type=Path, default=None, help="builds kept and reused here")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    s = Settings(numbers(a.ratios, float), numbers(a.batch_ratios, float),
                 numbers(a.plain_ratios, float),
                 numbers(a.batches, int), a.prompt_len, a.new_tokens,
                 a.repeats, a.calib_samples, a.provider)
    if a.workdir is not None:
        a.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(s, a.workdir or Path(tmp))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["rows"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
