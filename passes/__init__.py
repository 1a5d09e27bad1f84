"""prunec.passes: torch.fx passes that apply a static plan to a captured graph.

Each pass is a small unit with a name that returns what it changed; the pipeline is one
list. Imports prunec.compiler (IR, plans) and torch.
"""
