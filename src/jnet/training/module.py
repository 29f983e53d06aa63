"""The LightningModule: the model of ``config.model`` trained with ``MultiScaleLoss``, its
optimizer and learning-rate schedule, the validation Jaccard and the per-epoch re-seeding.

Reproducibility: at the start of every epoch the torch, numpy and Python generators are re-seeded
from ``(seed, epoch, rank)`` (:class:`EpochSeed`); :func:`jnet.training.run.train` drives it.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from jnet.errors import ConfigError
from jnet.evaluation.degenerate import ForegroundCounter, describe
from jnet.training.config import Config, TrainConfig, to_dict
from jnet.transforms import tasks

MONITOR = "val/jaccard"
log = logging.getLogger("jnet.training")


class JNetModule(L.LightningModule):
    """The model of ``config.model`` trained with ``MultiScaleLoss``.

    Logs ``train/loss``; on validation ``val/loss`` (of the final output) and ``val/jaccard``: the
    Jaccard index at the data's high resolution S per slice, averaged over structures, then over
    slices (both masks empty counts 1, as in :mod:`jnet.evaluation.metrics`), plus ``val/jaccard_<name>`` per
    structure, and ``val/degenerate`` (1 when the predictions of a structure are empty on every
    validation slice, or full on every one: :mod:`jnet.evaluation.degenerate`). ``history`` holds
    every validation's epoch, Jaccard and degenerate note; checkpoints carry it, so resume keeps it.

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
        self.history: list[dict] = []  # one entry per validation: epoch, jaccard, degenerate
        loss = config.loss
        self.loss = MultiScaleLoss(self.kind, weights=list(loss.weights) if loss.weights else None,
                                   lowres_target=loss.lowres_target, mid_target=loss.mid_target,
                                   dice_weight=loss.dice_weight, dice_scales=loss.dice_scales)

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
        # eval mode gives the final output only: its own term, whatever the per-scale weights
        self.log("val/loss", self.loss.terms(logits, target)[-1], on_epoch=True, batch_size=n,
                 sync_dist=True)
        pred, gt = hr_masks(logits, hr_label, self.kind, self.classes)
        iou = masks_jaccard(pred, gt)
        self._foreground.add(pred, gt)
        self._iou += torch.tensor([float(iou.mean(dim=1).sum()), float(n)], dtype=torch.float64)
        self.log(MONITOR, iou.mean(dim=1).mean(), on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)
        if len(self.structures) > 1:
            for k, name in enumerate(self.structures):
                self.log(f"val/jaccard_{name}", iou[:, k].mean(), on_epoch=True, batch_size=n,
                         sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._foreground = ForegroundCounter(self.structures)
        self._iou = torch.zeros(2, dtype=torch.float64)  # sum of slice Jaccards, slices

    def on_validation_epoch_end(self) -> None:
        # summed over ranks: "empty on every slice" must hold on all of them
        totals = torch.cat([self._foreground.counts.flatten(), self._iou]).to(self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum").double().cpu()
        self._foreground.counts = totals[:-2].reshape(self._foreground.counts.shape)
        note = describe(self._foreground.kinds())
        self.log("val/degenerate", float(note is not None), on_epoch=True, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        jaccard = float(totals[-2] / totals[-1]) if totals[-1] else None
        self.history.append({"epoch": int(self.current_epoch), "jaccard": jaccard, "degenerate": note})
        if note and self.trainer.is_global_zero:
            log.warning("validation after epoch %d: %s", self.current_epoch, note)

    def best_validation(self) -> dict | None:
        """The entry of ``history`` with the highest Jaccard (the first, as the best checkpoint)."""
        scored = [h for h in self.history if h["jaccard"] is not None]
        return max(scored, key=lambda h: h["jaccard"]) if scored else None

    def configure_optimizers(self) -> Any:
        train = self.config.train
        optimizer = make_optimizer(param_groups(self.model, train), train)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        factor = lr_factor(train, per_epoch, total)
        if factor is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jnet"] = self.info
        checkpoint["jnet_validation"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("jnet_validation", []))


def slice_jaccard(logits: torch.Tensor, hr_label: torch.Tensor, kind: str, classes: int) -> torch.Tensor:
    """Jaccard index per slice and structure at the label's resolution.

    Logits smaller than the label are upsampled bilinearly first. Both masks empty counts 1, only
    one empty counts 0 (the policy of :mod:`jnet.evaluation.metrics`).

    Shape: ``logits (B, C, h, w)``, ``hr_label (B, S, S)`` -> ``(B, K)``, K foreground structures.
    """
    return masks_jaccard(*hr_masks(logits, hr_label, kind, classes))


def hr_masks(logits: torch.Tensor, hr_label: torch.Tensor, kind: str,
             classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true masks at the label's resolution (logits upsampled bilinearly if smaller).

    Shape: ``logits (B, C, h, w)``, ``hr_label (B, S, S)`` -> two bool ``(B, K, S, S)``.
    """
    size = tuple(hr_label.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return tasks.masks_from_logits(logits, kind), tasks.masks_from_label(hr_label, kind, classes)


def masks_jaccard(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Jaccard per slice and structure of bool masks ``(B, K, S, S)`` -> ``(B, K)``."""
    from monai.metrics import compute_iou

    return compute_iou(pred.float(), gt.float(), include_background=True, ignore_empty=False)


def param_groups(model: torch.nn.Module, train: TrainConfig) -> list[dict]:
    """The model's parameters for the optimizer: a J-Net's head at ``lr x train.head_lr_scale``,
    everything else at ``lr`` (the schedule scales both alike).

    The head is small and sits behind the base: at the base's learning rate it learns less than a
    head trained on the same base's outputs for as many steps (docs/method.md measures it).
    """
    if not train.head_lr_scale > 0:
        raise ConfigError(f"train.head_lr_scale: expected a number > 0, found {train.head_lr_scale!r}")
    head = getattr(model, "head", None)
    head_params = list(head.parameters()) if isinstance(head, torch.nn.Module) else []
    in_head = {id(p) for p in head_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in in_head]}]
    if head_params:
        groups.append({"params": head_params, "lr": train.lr * train.head_lr_scale})
    return groups


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

