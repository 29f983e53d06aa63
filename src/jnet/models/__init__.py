"""Models: bases, the learned upsampling heads, J-Net and the baselines, and ``build_model``.

See ``docs/models.md`` for the architectures, parameter counts and the output contract.
"""
from __future__ import annotations

from jnet.models.bases import BASES, ELUNet, MonaiBase
from jnet.models.fold import FoldedHead, fold_head
from jnet.models.heads import ChainHead, PaperHead
from jnet.models.jnet import DEFAULTS, Baseline, JNet, build_model, resolve_config

__all__ = ["BASES", "DEFAULTS", "Baseline", "ChainHead", "ELUNet", "FoldedHead", "JNet",
           "MonaiBase", "PaperHead", "build_model", "fold_head", "resolve_config"]
