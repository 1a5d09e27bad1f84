"""prunec.compiler: typed IR, lowering from the parse tree, semantic checks, plans, diagnostics.

Imports only prunec.grammar and the standard library / lark / rich; never torch.
"""
