"""The table of diagnostic codes: one line each, grouped by the stage that reports them.

Invariants: codes are unique, never reused for a different meaning, and every code any
stage reports is listed here (a test scans the sources). P00xx: reading and parsing;
P01xx: lowering (structure, keys, value types); P02xx: semantic checks against the model
shape; P03xx: files and models on disk; P04xx: the build driver; P05xx: graph capture
and passes; P07xx: methods, locks and resume. Severity is the reporter's choice;
``WARNINGS`` lists the codes reported as warnings.
"""

from __future__ import annotations

CODES: dict[str, str] = {
    # reading and parsing
    "P0001": "the spec file cannot be read (missing, a directory, no permission)",
    "P0002": "the spec file is not valid UTF-8 text (or contains NUL bytes)",
    "P0003": "the input is too large or too deeply nested to process",
    "P0004": "unexpected character",
    "P0005": "unexpected end of file (an unclosed block, list or string)",
    "P0006": "expected a value after '='",
    "P0007": "expected '=' after a key",
    "P0008": "unterminated string",
    "P0009": "unknown escape sequence in a string (or a lone surrogate \\uD800-\\uDFFF)",
    "P0010": "syntax error (no more specific description)",
    "P0011": "expected '{' to open a block",
    "P0012": "expected a top-level item",
    "P0013": "malformed layer selector",
    "P0014": "malformed gate",
    "P0015": "malformed plan action",
    "P0016": "malformed list",
    "P0017": "expected a name (a block label or dataset name)",
    "P0018": "unexpected token after a value (a missing comma, a second value)",
    "P0019": "a block is still open where the next top-level item starts",
    # lowering: structure, keys and value types
    "P0101": "unknown key in a block",
    "P0102": "a key is given twice in one block",
    "P0103": "a value has the wrong type for its key",
    "P0104": "unknown word (method, dtype, format, provider, ...)",
    "P0105": "unknown unit suffix on a number",
    "P0106": "a required key or part is missing",
    "P0107": "a block that may appear once is declared twice",
    "P0108": "a dataset name is declared twice",
    "P0109": "an integer is required",
    "P0110": "the spec declares no model",
    "P0111": "the model declaration's location does not fit its kind",
    "P0112": "unknown block kind or gate",
    # semantic checks
    "P0201": "reference to an undefined dataset",
    "P0202": "a ratio or fraction is out of range",
    "P0203": "a dataset slice is empty",
    "P0204": "calibration and evaluation data overlap",
    "P0205": "a layer selector selects nothing or falls outside the model",
    "P0206": "a head count or head set breaks grouped-query attention",
    "P0207": "a channel or head index or count is out of range",
    "P0208": "a spec has both a static method and a manual plan",
    "P0209": "two manual plan actions conflict",
    "P0210": "ONNX gating requires a probe policy",
    "P0211": "an option does not apply to the chosen method",
    "P0212": "the method needs a scoring (calibration) dataset",
    "P0213": "the target is not reachable (empty or the whole model)",
    "P0214": "ONNX opset outside the range prunec exports (18..23)",
    "P0215": "duplicate or empty list entries",
    "P0216": "an integer option is out of range (samples, seq_len, steps, round, max_len)",
    "P0217": "the parameter gate can never fail or never pass",
    "P0218": "two exports write the same file",
    "P0219": "every layer is protected or skipped: nothing can be pruned",
    "P0220": "a dataset is declared but never used",
    "P0221": "onnxruntime fusions are not supported on per-batch gated graphs",
    "P0222": "compensate needs the ppsp metric (a probe to take the mean from)",
    "P0223": "the spec's name is not a plain name (it names the output directory)",
    "P0224": "an export name is not a plain name inside the artifact, or is the artifact's own",
    "P0225": "a dataset's seq_len is longer than the gated graph's max_len",
    "P0226": "the model (family or attention window) is one probe gating or its mode cannot express",
    "P0228": "least-squares reconstruction with damp = 0 has fewer calibration tokens than kept inputs",
    "P0229": "a half model dtype (float16, bfloat16) on device = cpu: half dtypes need a CUDA device",
    "P0230": "probe mode = prompt with a static metric (prompt mode scores with ppsp)",
    "P0231": "probe kept = per-batch without mode = prompt (only prompt mode fixes kept sets)",
    # files and models
    "P0301": "the model path does not exist or is not a model",
    "P0302": "a data file is missing, unreadable, or a glob matches nothing",
    "P0303": "the model's config cannot be read, is not a supported architecture, or has nonsense sizes",
    "P0304": "the hub model is not in the local cache; model checks were skipped",
    # build driver: data, artifacts, gates (runtime/)
    "P0401": "reading a datasets save_to_disk directory needs pyarrow",
    "P0402": "a dataset has too little text for samples x seq_len",
    "P0403": "a command-line combination that needs more input (e.g. eval of an artifact without --data)",
    "P0404": "an artifact directory is unusable (no model, several models, unreadable files)",
    "P0405": "a quality gate failed",
    "P0406": "the output directory (or a build file beside it) exists and is not prunec's, unchanged",
    "P0407": "a generation request the artifact cannot serve (an empty prompt, one that fills the context, --chat without a chat template)",
    "P0408": "the requested torch device is not available (device = cuda, --device cuda without a GPU)",
    # graph capture and passes (passes/)
    "P0501": "the model is not a Llama-style decoder prunec can prune",
    "P0502": "a decoder layer lacks an expected linear projection",
    "P0503": "a block's residual connection is not x + f(norm(x))",
    "P0504": "the grouped-query attention pattern (repeat_kv) was not found",
    "P0505": "the captured graph does not match the model's structure",
    "P0510": "the plan is invalid for this model",
    # methods, locks and resume (passes/methods/)
    "P0701": "the plan lock does not match the spec's pruning section or datasets",
    "P0702": "the plan lock does not match the model",
    "P0703": "the plan lock does not match the calibration data",
    "P0704": "a plan file cannot be read",
    "P0705": "the resume file belongs to another search or is damaged",
    "P0706": "a distributed search cannot run (--workers / --ray-address without Ray installed, an unreachable cluster, workers that keep dying)",
}

WARNINGS: frozenset[str] = frozenset({"P0217", "P0220", "P0304"})


def describe(code: str) -> str:
    """The one-line description of ``code`` (empty for an unknown code)."""
    return CODES.get(code, "")
