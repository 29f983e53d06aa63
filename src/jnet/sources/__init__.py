"""Published dataset layouts on disk (MSD, BraTS, PNG): the shared types, one reader per layout, the
layout registry, labels/tasks, the prediction input and the integrity check. Nothing heavy is
imported here: import the submodule you need, e.g. ``from jnet.sources.registry import discover``.
"""
