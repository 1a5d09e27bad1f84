"""Generation speed of SmolLM2-135M artifacts: dense vs MLP-pruned, with the KV cache, on ORT.

Artifacts, each built by ``prunec build`` from a spec written here (``model demo``, no
evaluation): the dense model, and static MLP-width plans at about 10 / 20 / 30 % of ALL
parameters (one-shot FLAP, ``target { mlp = F }`` with F = ratio x all params / MLP params,
calibrated on ``specs/data/kjv-calib.txt``). All ``export onnx`` at its defaults (KV cache,
fused graph, float32), plus, for the dense model and the ``--compare-ratio`` plan (the same
plan: rebuilt from the fp32 build's ``plan.lock.json``), ``dtype = float16`` and ``fuse =
off`` variants.

Timing (``runtime.generate.Generator``, the runtime of ``prunec generate``): prompts are
``--prompt-len``-token windows of ``specs/data/kjv-eval.txt`` (batch b: the first b windows,
all the same length, so no padding); greedy, ``--new-tokens`` tokens every run (EOS ignored
so every run decodes the same count). Time to first token = the prefill; decode tokens/s
= tokens after each sequence's first, over the whole batch, per second. Each repeat runs
every artifact once per batch size, round-robin (dense and pruned alternate under the same
load); medians over ``--repeats`` after one warm-up run per artifact and batch.
Uncached decode: the same graph with empty pasts, the whole sequence recomputed for every
token (what ``kv_cache = off`` computes), ``--uncached-tokens`` tokens at the
``--uncached-batches``, its greedy tokens checked against the cached run's.

Bound: the weight bytes read per decoded token, from each ONNX file's initializers: every
initializer in full, except one read only through a Gather's data input (the embedding
table when untied), which counts one row; SmolLM2 ties embeddings, so the table counts in
full as lm_head. bound = dense bytes / pruned bytes (same dtype and graph kind);
of_bound = decode speedup / bound (goal >= 0.9). The KV cache's bytes are not in the bound.

Run: ``python bench/generation.py [--ratios 0.1,0.2,0.3] [--batches 1,8] [--new-tokens 128]
[--repeats 5] [--workdir DIR] [--out FILE]``; builds are kept in ``--workdir`` and reused
when present (``--rebuild`` forces them). Prints a table; writes
``bench/results/generation.json`` with the machine (``bench/machine.py``); ``--table-from
FILE`` prints an earlier run's tables (the README's) without running anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "specs" / "data" / "kjv-calib.txt"
EVAL = ROOT / "specs" / "data" / "kjv-eval.txt"
RESULTS = Path(__file__).parent / "results" / "generation.json"


@dataclass(frozen=True)
class Settings:
    ratios: tuple[float, ...]
    batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    repeats: int
    uncached_tokens: int
    uncached_batches: tuple[int, ...]
    compare_ratio: float | None  # the plan of the fp16 and plain variants (None: skip them)
    calib_samples: int
    provider: str
    rebuild: bool


@dataclass(frozen=True)
class Variant:
    """One artifact: plan ratio (0 = dense), weight dtype, fused graph or not."""

    ratio: float
    dtype: str = "float32"
    fuse: bool = True

    @property
    def name(self) -> str:
        plan = "dense" if self.ratio == 0 else f"flap-{round(self.ratio * 100)}"
        return f"{plan}-{'fp16' if self.dtype == 'float16' else 'fp32'}-" + \
            ("fused" if self.fuse else "plain")


def variants(s: Settings) -> list[Variant]:
    main = [Variant(r) for r in dict.fromkeys((0.0, *s.ratios, s.compare_ratio or 0.0))]
    if s.compare_ratio is None:
        return main
    extra = [Variant(r, dtype, fuse) for dtype, fuse in (("float16", True), ("float32", False))
             for r in (0.0, s.compare_ratio)]
    return main + extra


# --- building ---------------------------------------------------------------------------

def mlp_fraction(ratio: float) -> float:
    """The MLP-channel fraction whose removal removes ``ratio`` of all parameters."""
    from prunec.compiler.ir import SMOLLM2_135M as shape
    from prunec.compiler.plan import Plan, param_count

    mlp = shape.n_layers * 3 * shape.hidden * shape.intermediate
    return ratio * param_count(shape, Plan.dense(shape)) / mlp


def spec_text(v: Variant, calib_samples: int) -> str:
    export = f'export onnx "model.onnx" {{ dtype = {v.dtype}, fuse = {"on" if v.fuse else "off"} }}'
    head = f'name = "{v.name}"\nmodel demo\n'
    if v.ratio == 0:
        return head + export + "\n"
    return head + (f'dataset calib text "{CALIB}" {{ samples = {calib_samples}, seq_len = 256 }}\n'
                   f"prune flap {{\n  target {{ mlp = {mlp_fraction(v.ratio):.4f} }}\n"
                   f"  score = calib\n}}\n{export}\n")


def build(v: Variant, workdir: Path, s: Settings) -> tuple[Path, float | None]:
    """The artifact directory of ``v`` (built unless present) and the build's seconds."""
    from prunec.runtime.cli import main

    out = workdir / v.name
    if (out / "model.onnx").is_file() and not s.rebuild:
        return out, None
    spec = workdir / f"{v.name}.prune"
    spec.write_text(spec_text(v, s.calib_samples))
    args = ["build", str(spec), "-o", str(out), "-q"]
    lock = workdir / Variant(v.ratio).name / "plan.lock.json"
    if v != Variant(v.ratio) and lock.is_file():
        args += ["--lock", str(lock)]  # the same plan as the fp32 fused build
    start = time.perf_counter()
    if main(args) != 0:
        raise SystemExit(f"prunec {' '.join(args)} failed")
    return out, time.perf_counter() - start


# --- weight bytes -----------------------------------------------------------------------

def weight_bytes(onnx_path: Path) -> tuple[int, int]:
    """(all initializer bytes, bytes read per decoded token) of an ONNX file (see the
    module docstring: a table read only by Gather counts one row)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    gathered_only: dict[str, bool] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            by_row = node.op_type == "Gather" and i == 0
            gathered_only[name] = gathered_only.get(name, True) and by_row
    total = read = 0
    for t in graph.initializer:
        size = int(np.prod(t.dims, dtype=np.int64)) * \
            helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        total += size
        row = size // t.dims[0] if t.dims and t.dims[0] else size
        read += row if gathered_only.get(t.name, False) else size
    return total, read


def artifact_entry(v: Variant, path: Path, build_s: float | None) -> dict[str, Any]:
    report = json.loads((path / "report.json").read_text())
    total, read = weight_bytes(path / "model.onnx")
    files = sum(f.stat().st_size for f in path.glob("model.onnx*"))
    return {"name": v.name, "ratio": v.ratio, "dtype": v.dtype, "fuse": v.fuse,
            "params_removed": report["params"]["reduction"],
            "params": report["params"]["pruned"],
            "channels_kept": report["plan_summary"].get("channels_kept"),
            "onnx_bytes": files, "weight_bytes": total, "weight_bytes_per_token": read,
            "build_s": build_s}


# --- timing -----------------------------------------------------------------------------

def prompts(tokenizer: Any, length: int, count: int) -> list[list[int]]:
    ids = list(tokenizer(EVAL.read_text(encoding="utf-8"))["input_ids"])
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def open_generator(path: Path, provider: str) -> Any:
    from prunec.compiler.ir import Provider
    from prunec.runtime.generate import Generator

    providers = (Provider.CUDA, Provider.CPU) if provider == "cuda" else (Provider.CPU,)
    gen = Generator(path / "model.onnx", providers)
    gen.manifest = dataclasses.replace(gen.manifest, eos=())  # decode every token asked for
    return gen


def cached_run(gen: Any, batch: list[list[int]], n: int) -> tuple[float, float, list[int]]:
    """(time to first token s, decode tokens/s, row 0's tokens) of one greedy run."""
    from prunec.runtime.generate import SamplingConfig

    out = gen.generate(batch, SamplingConfig(max_new_tokens=n))
    assert all(len(t) == n for t in out.tokens), "every run decodes the same count"
    return out.time_to_first_token_s, out.decode_tokens_per_s, list(out.tokens[0])


def uncached_run(gen: Any, batch: list[list[int]], n: int) -> tuple[float, float, list[int]]:
    """The same without the cache: every token recomputes the whole sequence at past 0."""
    m = gen.manifest
    dtype = np.float16 if m.dtype == "float16" else np.float32
    ids = np.array(batch, dtype=np.int64)
    empty = {name: np.zeros((len(batch), heads, 0, m.head_dim), dtype)
             for name, heads in zip(m.past_names(), np.repeat(m.kv_heads, 2))}
    times = []
    for _ in range(n):
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()}
        start = time.perf_counter()
        logits = gen.session.session.run(["logits"], feed | empty)[0]
        times.append(time.perf_counter() - start)
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None].astype(np.int64)], 1)
    decode = len(batch) * (n - 1) / sum(times[1:]) if n > 1 else 0.0
    return times[0], decode, ids[0, -n:].tolist()


Samples = dict[tuple[str, str, int], list[tuple[float, float, list[int]]]]


def time_all(gens: dict[str, Any], texts: list[list[int]], s: Settings) -> Samples:
    """Every (mode, artifact, batch)'s runs, round-robin over the artifacts per repeat."""
    samples: Samples = defaultdict(list)
    plan = [("cached", b, s.new_tokens, cached_run) for b in s.batches]
    plan += [("uncached", b, s.uncached_tokens, uncached_run) for b in s.uncached_batches
             if s.uncached_tokens > 0]
    for mode, b, n, fn in plan:
        names = [k for k in gens if mode == "cached" or k.endswith("fp32-fused")]
        for name in names:
            fn(gens[name], texts[:b], min(n, 2))  # warm-up
        for _ in range(s.repeats):
            for name in names:
                samples[(mode, name, b)].append(fn(gens[name], texts[:b], n))
    return samples


# --- results ----------------------------------------------------------------------------

def medians(samples: Samples) -> list[dict[str, Any]]:
    return [{"mode": mode, "artifact": name, "batch": b,
             "ttft_ms": statistics.median(r[0] for r in runs) * 1e3,
             "decode_tok_s": statistics.median(r[1] for r in runs), "runs": len(runs)}
            for (mode, name, b), runs in samples.items()]


def point(rows: list[dict[str, Any]], mode: str, name: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["mode"], r["artifact"], r["batch"]) == (mode, name, batch)),
                None)


def speedups(rows: list[dict[str, Any]], arts: dict[str, dict[str, Any]],
             vs: list[Variant]) -> list[dict[str, Any]]:
    """Pruned vs the dense artifact of the same kind: decode speedup against the bound."""
    out = []
    for v in (v for v in vs if v.ratio > 0):
        dense = Variant(0.0, v.dtype, v.fuse).name
        bound = arts[dense]["weight_bytes_per_token"] / arts[v.name]["weight_bytes_per_token"]
        for r in (r for r in rows if r["mode"] == "cached" and r["artifact"] == v.name):
            d = point(rows, "cached", dense, r["batch"])
            if d is None:
                continue
            speedup = r["decode_tok_s"] / d["decode_tok_s"]
            out.append({"artifact": v.name, "dense": dense, "batch": r["batch"],
                        "params_removed": arts[v.name]["params_removed"],
                        "dense_tok_s": d["decode_tok_s"], "pruned_tok_s": r["decode_tok_s"],
                        "speedup": speedup, "bound": bound, "of_bound": speedup / bound,
                        "ttft_speedup": d["ttft_ms"] / r["ttft_ms"]})
    return out


def ratio_rows(rows: list[dict[str, Any]], pairs: list[tuple[str, str, str, str]],
               ) -> list[dict[str, Any]]:
    """Decode tokens/s of A over B for (what, mode A, artifact A, artifact B / mode B)."""
    out = []
    for what, a, b, mode_b in pairs:
        for r in (r for r in rows if r["artifact"] == a and r["mode"] == "cached"):
            other = point(rows, mode_b, b, r["batch"])
            if other is not None:
                out.append({"comparison": what, "a": a, "b": f"{b} ({mode_b})",
                            "batch": r["batch"], "a_tok_s": r["decode_tok_s"],
                            "b_tok_s": other["decode_tok_s"],
                            "ratio": r["decode_tok_s"] / other["decode_tok_s"]})
    return out


def comparisons(rows: list[dict[str, Any]], vs: list[Variant]) -> list[dict[str, Any]]:
    pairs = [("cached vs uncached", v.name, v.name, "uncached") for v in vs
             if v.dtype == "float32" and v.fuse]
    for v in (v for v in vs if v.dtype == "float16"):
        pairs.append(("fp16 vs fp32", v.name, Variant(v.ratio).name, "cached"))
    for v in (v for v in vs if not v.fuse):
        pairs.append(("fused vs plain", Variant(v.ratio).name, v.name, "cached"))
    return ratio_rows(rows, pairs)


def uncached_agree(samples: Samples) -> dict[str, bool]:
    """Whether each uncached run's greedy tokens equal the cached run's first tokens."""
    agree = {}
    for (mode, name, b), runs in samples.items():
        cached = samples.get(("cached", name, b))
        if mode == "uncached" and cached:
            n = len(runs[0][2])
            agree[f"{name}@{b}"] = all(r[2] == cached[0][2][:n] for r in runs)
    return agree


def fp16_agreement(samples: Samples, vs: list[Variant], first: int = 32
                   ) -> list[dict[str, Any]]:
    """Greedy tokens of each float16 artifact against its float32 twin (same plan, same
    prompt, row 0 of the first cached run): equal positions among the first ``first`` tokens,
    and the first position that differs (None when none does)."""
    out = []
    for v in (v for v in vs if v.dtype == "float16"):
        twin = Variant(v.ratio, "float32", v.fuse).name
        for (mode, name, b), runs in samples.items():
            other = samples.get((mode, twin, b))
            if mode != "cached" or name != v.name or not other:
                continue
            a, ref = runs[0][2][:first], other[0][2][:first]
            same = [x == y for x, y in zip(a, ref)]
            out.append({"artifact": v.name, "twin": twin, "batch": b, "tokens": len(same),
                        "equal": sum(same), "first_difference":
                        same.index(False) if False in same else None})
    return out


def markdown(result: dict[str, Any]) -> list[str]:
    """The result as the README's tables (every number one JSON value, rounded once)."""
    head = ("| artifact | batch | params removed | dense tok/s | pruned tok/s | speedup | bound "
            "| of bound | TTFT speedup |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['artifact']} | {p['batch']} | {p['params_removed']:.1%} | "
              f"{p['dense_tok_s']:.1f} | {p['pruned_tok_s']:.1f} | {p['speedup']:.2f}x | "
              f"{p['bound']:.2f}x | {p['of_bound']:.2f} | {p['ttft_speedup']:.2f}x |"
              for p in result["speedups"]]
    lines += ["", "| comparison | A | B | batch | A tok/s | B tok/s | A / B |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['comparison']} | {c['a']} | {c['b']} | {c['batch']} | {c['a_tok_s']:.1f} "
              f"| {c['b_tok_s']:.1f} | {c['ratio']:.2f}x |" for c in result["comparisons"]]
    lines += ["", "| float16 artifact | batch | greedy tokens equal to float32 |", "|---|---|---|"]
    lines += [f"| {a['artifact']} | {a['batch']} | {a['equal']} of {a['tokens']} |"
              for a in result.get("fp16_agreement", [])]
    return lines


def run(s: Settings, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    run_on = machine.start()
    vs = variants(s)
    built = {v.name: build(v, workdir, s) for v in vs}
    arts = {v.name: artifact_entry(v, *built[v.name]) for v in vs}
    tokenizer = AutoTokenizer.from_pretrained(str(built[vs[0].name][0]))
    texts = prompts(tokenizer, s.prompt_len, max((*s.batches, *s.uncached_batches)))
    gens = {v.name: open_generator(built[v.name][0], s.provider) for v in vs}
    samples = time_all(gens, texts, s)
    rows = medians(samples)
    return {"benchmark": "generation", "model": "SmolLM2-135M-Instruct",
            "settings": dataclasses.asdict(s), "machine": run_on.entry(),
            "artifacts": list(arts.values()), "rows": rows, "speedups": speedups(rows, arts, vs),
            "comparisons": comparisons(rows, vs), "uncached_tokens_agree": uncached_agree(samples),
            "fp16_agreement": fp16_agreement(samples, vs)}


def numbers(text: str, kind: type) -> tuple[Any, ...]:
    return tuple(kind(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratios", default="0.1,0.2,0.3", help="fractions of all parameters")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--uncached-tokens", type=int, default=16, help="0: skip uncached decode")
    p.add_argument("--uncached-batches", default="1")
    p.add_argument("--compare-ratio", default="0.2",
                   help="plan of the fp16 / plain variants; 'none' skips them")
    p.add_argument("--calib-samples", type=int, default=32, help="FLAP calibration, x256 tokens")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rebuild", action="store_true", help="rebuild artifacts in --workdir")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table-from", type=Path, default=None,
                   help="print the tables of an earlier run's JSON and exit (no run)")
    a = p.parse_args(argv)
    if a.table_from is not None:
        print("\n".join(markdown(json.loads(a.table_from.read_text()))))
        raise SystemExit(0)
    compare = None if a.compare_ratio == "none" else float(a.compare_ratio)
    s = Settings(numbers(a.ratios, float), numbers(a.batches, int), a.prompt_len, a.new_tokens,
                 a.repeats, a.uncached_tokens, numbers(a.uncached_batches, int), compare,
                 a.calib_samples, a.provider, a.rebuild)
    return s, a.workdir, a.out


def main() -> None:
    s, workdir, out = parse()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(s, workdir or Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(markdown(result)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
