"""prunec.grammar: the Lark grammar of the .prune language and the cached LALR parser.

Owns turning source text into a Lark parse tree with positions; no torch, no IR.
"""
