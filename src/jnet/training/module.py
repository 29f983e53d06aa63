"""The LightningModule: the model of ``config.model`` trained with ``MultiScaleLoss``, its
optimizer and learning-rate schedule, the validation Jaccard and the per-epoch re-seeding.

Reproducibility: at the start of every epoch the torch, numpy and Python generators are re-seeded
from ``(seed, epoch, rank)`` (:class:`EpochSeed`); :func:`jnet.training.run.train` drives it.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from jnet.training.config import Config, TrainConfig, to_dict
from jnet.transforms import tasks

MONITOR = "val/jaccard"


class JNetModule(L.LightningModule):
    """The model of ``config.model`` trained with ``MultiScaleLoss``.

    Logs ``train/loss``; on validation ``val/loss`` (of the final output) and ``val/jaccard``: the
    Jaccard index at the data's high resolution S per slice, averaged over structures, then over
    slices (both masks empty counts 1, as in :mod:`jnet.evaluation.metrics`), plus ``val/jaccard_<name>`` per
    structure.

    Args:
        config: a resolved :class:`~jnet.training.config.Config` (see :func:`jnet.training.run.fill_from_cache`).
        prepared: the cache's ``prepared.json``; with the model it makes the checkpoint info
            (:func:`jnet.training.checkpoint.make_info`), saved as ``checkpoint["jnet"]``.
    """

    def __init__(self, config: Config, prepared: Mapping[str, Any]) -> None:
        super().__init__()
        from jnet.training.checkpoint import make_info
        from jnet.training.losses import MultiScaleLoss
        from jnet.models import build_model

        self.config = config
        self.kind = prepared["task"]["kind"]
        self.classes = int(prepared["task"]["classes"])
        self.size = int(prepared["size"])
        self.structures = tasks.structure_names(prepared["task"])
        self.model = build_model(**config.model)
        self.info = make_info(self.model, prepared, downsample=config.data.downsample,
                              config=to_dict(config))
        loss = config.loss
        self.loss = MultiScaleLoss(self.kind, weights=list(loss.weights) if loss.weights else None,
                                   lowres_target=loss.lowres_target, mid_target=loss.mid_target,
                                   dice_weight=loss.dice_weight)

    def forward(self, x: torch.Tensor) -> Any:
        """Shape: ``(B, C, s, s)`` -> list of logits low to high (training) or ``(B, K, S', S')``."""
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        lr, hr_label = batch[0], batch[1]
        target = tasks.target_from_label(hr_label, self.kind, self.classes)
        loss = self.loss(self.model(lr), target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=lr.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        lr, hr_label = batch[0], batch[1]
        n = lr.shape[0]
        logits = self.model(lr)
        target = tasks.target_from_label(hr_label, self.kind, self.classes)
        self.log("val/loss", self.loss(logits, target), on_epoch=True, batch_size=n, sync_dist=True)
        iou = slice_jaccard(logits, hr_label, self.kind, self.classes)
        self.log(MONITOR, iou.mean(dim=1).mean(), on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)
        if len(self.structures) > 1:
            for k, name in enumerate(self.structures):
                self.log(f"val/jaccard_{name}", iou[:, k].mean(), on_epoch=True, batch_size=n,
                         sync_dist=True)

    def configure_optimizers(self) -> Any:
        train = self.config.train
        optimizer = make_optimizer(self.model.parameters(), train)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        factor = lr_factor(train, per_epoch, total)
        if factor is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jnet"] = self.info


def slice_jaccard(logits: torch.Tensor, hr_label: torch.Tensor, kind: str, classes: int) -> torch.Tensor:
    """Jaccard index per slice and structure at the label's resolution.

    Logits smaller than the label are upsampled bilinearly first. Both masks empty counts 1, only
    one empty counts 0 (the policy of :mod:`jnet.evaluation.metrics`).

    Shape: ``logits (B, C, h, w)``, ``hr_label (B, S, S)`` -> ``(B, K)``, K foreground structures.
    """
    from monai.metrics import compute_iou

    size = tuple(hr_label.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    pred = tasks.masks_from_logits(logits, kind).float()
    gt = tasks.masks_from_label(hr_label, kind, classes).float()
    return compute_iou(pred, gt, include_background=True, ignore_empty=False)


def make_optimizer(params: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer`` (adam, adamw, sgd with momentum)."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay)


def lr_factor(train: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The learning-rate multiplier per optimizer step (for ``LambdaLR``), or None for a constant rate.

    Linear warm-up over ``train.warmup`` epochs, then ``cosine`` (to ``min_lr`` at the last step),
    ``step`` (times ``gamma`` every ``step_size`` epochs) or constant. Everything is per step, so a
    resumed run continues the schedule exactly.
    """
    warmup = int(round(train.warmup * steps_per_epoch))
    if train.scheduler == "none" and warmup == 0:
        return None
    floor = train.min_lr / train.lr if train.lr > 0 else 0.0

    def factor(step: int) -> float:
        scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if train.scheduler == "cosine":
            progress = min(1.0, max(0, step - warmup) / max(1, total_steps - warmup))
            scale *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif train.scheduler == "step":
            scale *= train.gamma ** (step // (train.step_size * steps_per_epoch))
        return scale

    return factor


class EpochSeed(L.Callback):
    """Re-seed torch, numpy and ``random`` from ``(seed, epoch, rank)`` when each epoch starts.

    The sampler's shuffle, augmentation and the data loader workers' seeds then depend on the epoch
    only, not on what ran before it, so resuming from an epoch boundary is exact.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = np.random.SeedSequence([self.seed, trainer.current_epoch, trainer.global_rank])
        value = int(state.generate_state(1, dtype=np.uint32)[0])
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)


# --- config resolution ------------------------------------------------------------------------------

