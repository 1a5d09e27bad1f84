"""Every number in the README's measured sections is a value of a JSON a bench script wrote.

Scope: from "## Methods and what we measured" to "## Development". The text is cut into
blocks (paragraphs, tables, list items); a block's sources are the ``*.json`` files of
``bench/results/`` it names, or else those of the nearest block before it in the same
``##`` section (a table reads the paragraph that introduces it); with none, every result.
A number printed with d decimals (or d mantissa decimals in ``7.3e-7`` notation) must equal
some JSON value of its sources formatted the same way: rounded once, from the JSON. ``N%``
may also be a fraction (0.2 -> 20%). Numbers inside `code`, in names (``SmolLM2``,
``PP-40``) and input shapes (``4×128``) are not measurements and are skipped. Two tables
below name the exceptions, each kept honest: ``DERIVED`` phrases are computed here from the
JSON (a ratio or difference of JSON values), ``SETTINGS`` phrases are tolerances and
settings, not measurements. Both must occur in the README, so a stale entry fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
README = (ROOT / "README.md").read_text(encoding="utf-8")
NUMBER = re.compile(r"(?<![\w.\-\[/])(\d+(?:\.\d+)?(?:e-?\d+)?)(%|x)?(?![\w\[\]])")
# a result cited by path or by bare name; not the tail of another file's name
# (``model.gating.json``, ``plan.lock.json``), which is an artifact file, not a result
CITED = re.compile(r"(?:bench/results/|(?<![\w./-]))([\w-]+\.json)\b")

Results = dict[str, Any]


def _row(results: Results, name: str, **match: Any) -> dict[str, Any]:
    rows = results[name].get("rows") or results[name]["points"]
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def _ppl(results: Results, name: str, method: str, ratio: float) -> float:
    return float(_row(results, name, method=method, ratio=ratio)["ppl"])


def _ms(results: Results, variant: str, batch: int) -> float:
    return float(_row(results, "probe_latency.json", variant=variant, batch=batch)["median_ms"])


def _refit_ppl(results: Results, method: str, ratio: float, setting: str) -> float:
    row = _row(results, "reconstruct_quality.json", method=method, ratio=ratio,
               setting=setting, protocol="out-of-domain")
    return float(row["heldout_ppl"])


def _dense_ms(results: Results, graph: str) -> float:
    point = _row(results, "static_latency.json", graph=graph, target=0.1, batch=1)
    return float(point["dense_ms"])


# (phrase in the README, the number in it, that number computed from the JSON)
DERIVED: tuple[tuple[str, str, Callable[[Results], float]], ...] = (
    ("1.35x faster at 1×512", "1.35",
     lambda r: _dense_ms(r, "plain") / _dense_ms(r, "fused")),
    ("worth 2.6 points at 20%", "2.6",
     lambda r: (_ppl(r, "probe_quality_diag.json", "flap-no-bias", 0.2)
                - _ppl(r, "probe_quality.json", "flap", 0.2))),
    ("and 68 at 40%", "68",
     lambda r: (_ppl(r, "probe_quality_diag.json", "flap-no-bias", 0.4)
                - _ppl(r, "probe_quality.json", "flap", 0.4))),
    ("saved 4.3% at 4×128", "4.3%",
     lambda r: 1 - _ms(r, "pp-40", 4) / _ms(r, "pp-40-copy-h", 4)),
    ("and 2.3% at 1×512 against copying", "2.3%",
     lambda r: 1 - _ms(r, "pp-40", 1) / _ms(r, "pp-40-copy-h", 1)),
    # the JSON's speedup 1.135 is itself rounded (from 1.1348): quote the medians' ratio
    ("| 516.0 | 1.21x | 1.13x |", "1.13",
     lambda r: _ms(r, "dense-static-fused", 4) / _ms(r, "pp-40-probe-free", 4)),
)

DERIVED += (
    ("costs at most 4.8% (wanda-sp at 10%)", "4.8%",
     lambda r: (_refit_ppl(r, "wanda-sp", 0.1, "least-squares")
                / _refit_ppl(r, "wanda-sp", 0.1, "off") - 1)),
)

# tolerances the tests assert and settings of the runs, not measurements
SETTINGS = (
    "logits within 1e-4",
    "all 30 layers of SmolLM2 at 40%",
    "The goal of 1.25x at 40%",
    "5% of the samples",
    "0.39 at 8×128 tokens",  # damp = auto's formula (compiler.ir.damp_for), not a measurement
    "0.098 at 16×256",
)


def phrase(words: str) -> re.Pattern[str]:
    """``words`` as they may be wrapped across README lines."""
    return re.compile(r"\s+".join(map(re.escape, words.split())))


def measured_text(readme: str) -> str:
    start = readme.index("## Methods and what we measured")
    return readme[start:readme.index("## Development", start)]


def blocks(text: str, every: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Each block of ``text`` with the result files it reads (see the module docstring);
    ``every``: all result files, the sources of a block that follows no citation."""
    for section in re.split(r"\n(?=## )", text):
        sources: tuple[str, ...] = ()
        for block in re.split(r"\n\s*\n|\n(?=- )", section):
            cited = tuple(dict.fromkeys(CITED.findall(block)))
            sources = cited or sources
            yield block, sources or every


def measurements(block: str) -> list[str]:
    """The numbers of ``block`` that state a measurement (``1.2x`` as ``1.2``; ``%`` kept)."""
    text = re.sub(r"`[^`]*`", " ", block)
    text = re.sub(r"\d+×\d+", " ", text)
    return [num + unit.replace("x", "") for num, unit in NUMBER.findall(text)]


def json_numbers(value: Any) -> Iterator[float]:
    """Every number in a JSON value, those written inside strings ("8x128") included."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, str):
        yield from (float(n) for n in re.findall(r"\d+(?:\.\d+)?", value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_numbers(item)


def formatted(value: float, printed: str) -> str:
    """``value`` rounded once to the precision ``printed`` shows."""
    if "e" in printed:
        mantissa = printed.split("e")[0]
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        m, e = f"{value:.{digits}e}".split("e")
        return f"{m}e{int(e)}"
    digits = len(printed.split(".")[1]) if "." in printed else 0
    return f"{value:.{digits}f}"


def quotes(printed: str, values: set[float]) -> bool:
    """Whether ``printed`` (``12.3`` or ``15%``) is one of ``values`` rounded once."""
    number = printed.rstrip("%")
    scales = (1.0, 100.0) if printed.endswith("%") else (1.0,)
    return any(formatted(v * s, number) == number for v in values for s in scales)


def results() -> Results:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in RESULTS.glob("*.json")}


def _blanking(number: str) -> Callable[[re.Match[str]], str]:
    """Replaces ``number`` in a matched phrase (a derived number, checked on its own)."""
    return lambda match: match[0].replace(number, " ", 1)


def unbacked(readme: str, loaded: Results) -> list[str]:
    """Each measured number of ``readme`` that no cited JSON backs, as 'number (files)'."""
    text = measured_text(readme)
    for words, printed, _ in DERIVED:
        text = phrase(words).sub(_blanking(printed), text)
    for words in SETTINGS:
        text = phrase(words).sub(" ", text)
    missing = []
    for block, sources in blocks(text, tuple(sorted(loaded))):
        values = {v for name in sources for v in json_numbers(loaded[name])}
        missing += [f"{n} ({', '.join(sources)}): {block[:60]!r}"
                    for n in measurements(block) if not quotes(n, values)]
    return missing


def test_every_measured_number_is_a_cited_json_value() -> None:
    assert unbacked(README, results()) == []


@pytest.mark.parametrize(("words", "printed", "compute"), DERIVED, ids=[d[0] for d in DERIVED])
def test_derived_numbers_are_computed_from_the_json(
        words: str, printed: str, compute: Callable[[Results], float]) -> None:
    assert phrase(words).search(measured_text(README)) and printed in words, "stale entry"
    assert quotes(printed, {compute(results())})


@pytest.mark.parametrize("words", SETTINGS)
def test_settings_phrases_are_in_the_readme(words: str) -> None:
    assert phrase(words).search(measured_text(README)), "stale SETTINGS entry"


def test_citations_name_existing_results() -> None:
    cited = set(CITED.findall(measured_text(README)))
    assert cited and cited <= set(results())


def test_a_double_rounded_or_invented_number_fails() -> None:
    """The check can fail: 74.9546 printed 74.96 (rounded twice), a number from no JSON."""
    loaded = {"x.json": {"rows": [{"ppl": 74.9546}]}}
    good = "## Methods and what we measured\n\nppl 74.95 (`x.json`)\n\n## Development\n"
    assert unbacked(good, loaded) == []
    assert unbacked(good.replace("74.95", "74.96"), loaded) != []
    assert unbacked(good.replace("74.95", "74.95 in 3:50"), loaded) != []
