"""Policy: which channels to remove. Importance criteria, selection, the pruner, counting.

Everything here reads the analysis through :class:`fxprune.DependencyGraph`; nothing
here is imported by ``fxprune.passes``.
"""
