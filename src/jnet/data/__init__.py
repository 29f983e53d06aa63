"""Datasets: the published layouts (``formats``), built-in synthetic data (``synth``), the integrity
check (``check``), the slice cache (``prepare``), low-resolution pairs (``pairs``) and the data module.

Nothing heavy is imported here: import the submodule you need, e.g.
``from jnet.data.formats import discover, load_case``.
"""
from __future__ import annotations
