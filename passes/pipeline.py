"""The static pruning pipeline: capture -> analyse -> PIPELINE -> re-export.

``PIPELINE`` is the whole rewrite, in order (read it top to bottom):
1. remove_blocks        x + f(norm(x)) -> x for every removed attention / MLP block
2. keep_channels        slice gate/up rows and down columns to the kept MLP channels
3. keep_heads           slice q rows / o columns (and k/v rows of whole dropped KV groups)
4. fix_head_shapes      rewrite repeat_kv's n_kv / n_rep / head-count constants
5. drop_cache_outputs   (cache graphs) drop the present key/value of layers without attention
6. eliminate_dead_code  drop the nodes removed blocks left behind
7. drop_cache_inputs    (cache graphs) drop their past key/value inputs
8. drop_unused_weights  drop the weights no node reads any more
``prune_graph`` then re-exports the pruned GraphModule with ``torch.export`` (dynamic batch
and seq; for cache graphs also past length, with example past tensors of the kept KV
heads), which re-derives every shape: a missed constant fails here, not at runtime.
The input model is not modified (the passes replace attributes of the captured module).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.analysis import analyze
from prunec.passes.cache_io import DROP_CACHE_INPUTS, DROP_CACHE_OUTPUTS, cache_layout
from prunec.passes.capture import (
    DEFAULT_CAPTURE,
    CaptureConfig,
    cache_examples,
    capture,
    reexport,
)
from prunec.passes.dead_code import DROP_UNUSED_WEIGHTS, ELIMINATE_DEAD_CODE
from prunec.passes.fix_shapes import FIX_HEAD_SHAPES
from prunec.passes.infra import GraphPass, PassContext, PassManager, PassReport
from prunec.passes.keep_channels import KEEP_CHANNELS
from prunec.passes.keep_heads import KEEP_HEADS
from prunec.passes.remove_block import REMOVE_BLOCKS

PIPELINE: tuple[GraphPass, ...] = (
    REMOVE_BLOCKS,
    KEEP_CHANNELS,
    KEEP_HEADS,
    FIX_HEAD_SHAPES,
    DROP_CACHE_OUTPUTS,
    ELIMINATE_DEAD_CODE,
    DROP_CACHE_INPUTS,
    DROP_UNUSED_WEIGHTS,
)


def check_plan(plan: Plan, shape: ModelShape, span: Span | None = None) -> None:
    """CompileError (P0510) listing the plan's problems for this model, if any."""
    problems = plan.validate(shape)
    if problems:
        where = span if span is not None else Span.unknown("<plan>")
        raise CompileError(tuple(Diagnostic.error("P0510", f"invalid plan: {p}", where)
                                 for p in problems))


def run_pipeline(gm: GraphModule, plan: Plan, shape: ModelShape, span: Span | None = None
                 ) -> tuple[GraphModule, PassReport]:
    """Analyse a captured GraphModule and run ``PIPELINE`` on it (in place)."""
    check_plan(plan, shape, span)
    ctx = PassContext(plan, shape, analyze(gm, shape, span))
    pruned, report = PassManager(PIPELINE).run(gm, ctx)
    return pruned, report


def prune_graph(model: nn.Module, plan: Plan, shape: ModelShape, span: Span | None = None,
                config: CaptureConfig = DEFAULT_CAPTURE,
                release: Callable[[GraphModule], None] | None = None,
                ) -> tuple[ExportedProgram, PassReport]:
    """Capture ``model``, apply ``plan`` as graph passes, and re-export the result.

    ``span`` (the spec's model line) locates diagnostics for an incompatible model.
    ``release`` is called with the pruned GraphModule before the re-export, when this
    function no longer holds ``model`` (a caller that handed it over with no reference of its
    own copies the graph's weights out of it there, and the model goes).
    """
    check_plan(plan, shape, span)
    dtype = next(model.parameters()).dtype
    gm, report = run_pipeline(capture(model, config), plan, shape, span)
    del model
    if release is not None:
        release(gm)
    if not config.kv_cache:
        return reexport(gm, config), report
    past = cache_examples(config, cache_layout(plan, shape).shapes(), dtype)
    return reexport(gm, config, past), report
