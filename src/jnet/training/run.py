"""Training with Lightning: :func:`train`, which sets up a run directory and runs the Trainer.

``train(config, out_dir)`` resolves the config against the prepared data (the model's
``in_channels``/``classes``/``out_size`` come from the cache when absent and are checked when
present), claims the run directory (see :mod:`jnet.training.rundir`), writes ``config.yaml``,
``manifest.json`` and ``info.json``, and runs a Lightning ``Trainer`` with best/last checkpoints,
optional early stopping, CSV + TensorBoard logs and a progress bar. Accelerator, devices, strategy
and num_nodes pass through, so the same command runs DDP under ``torchrun`` or SLURM.

Reproducibility: ``seed_everything(seed, workers=True)`` before the model is built, deterministic
algorithms (warn-only, so an op without a deterministic kernel cannot stop a long run), and at the
start of every epoch the torch, numpy and Python generators are re-seeded from ``(seed, epoch,
rank)``. Every epoch is therefore a function of the weights, the optimizer state and the epoch
number alone, which Lightning restores from ``last.ckpt``: a run that is killed and resumed reaches
the same weights as one that was never interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from jnet.cache.reader import open_prepared
from jnet.errors import CheckpointError, ConfigError, DataError, JnetError
from jnet.training import rundir
from jnet.training.checkpoint import model_from_checkpoint, read_checkpoint
from jnet.training.checkpoint_io import AtomicCheckpointIO
from jnet.training.config import Config
from jnet.training.curves import CURVES, plot_curves
from jnet.training.datamodule import PreparedDataModule
from jnet.training.module import MONITOR, EpochSeed, JNetModule
from jnet.utils.atomic import write_json


def read_prepared(config: Config) -> tuple[Path, dict]:
    """The prepared cache directory of ``data.path`` (absolute) and its ``prepared.json``."""
    if not config.data.path:
        raise ConfigError("data.path: not set; pass the prepared slice cache, e.g. "
                          "data.path=/data/prostate-256 (make one with `jnet data prepare`)")
    root = Path(config.data.path).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"data.path: {root} does not exist; expected a slice cache directory made "
                          f"by `jnet data prepare`")
    if not (root / "prepared.json").is_file():
        raise ConfigError(f"data.path: {root} is not a prepared slice cache (no prepared.json); "
                          f"make one with `jnet data prepare`")
    prepared = open_prepared(root).meta  # checks prepared.json and the arrays (DataError)
    return root, prepared


def fill_from_cache(config: Config, prepared: Mapping[str, Any], root: Path) -> Config:
    """Fill and check the config against the prepared data.

    ``data.path`` becomes absolute; ``model.in_channels``, ``model.classes`` and (except for
    ``arch: base``) ``model.out_size`` are taken from the cache when absent and must match it
    when present; ``data.task`` and ``data.channels``, when set, must match the cache.

    Raises:
        ConfigError: naming the config field and the value the data has.
    """
    task, channels, size = prepared["task"], list(prepared["channels"]), int(prepared["size"])
    if config.data.task is not None and config.data.task != task["kind"]:
        raise ConfigError(f"data.task: the config expects a {config.data.task!r} task, but the cache "
                          f"{root} holds a {task['kind']!r} task ({', '.join(task['names'])})")
    if config.data.channels is not None and list(config.data.channels) != channels:
        raise ConfigError(f"data.channels: the config expects {list(config.data.channels)}, but the "
                          f"cache {root} has {channels}")
    model = dict(config.model)
    wanted = {"in_channels": len(channels), "classes": int(task["classes"])}
    if model.get("arch", "jnet") != "base":
        wanted["out_size"] = size
    elif model.get("out_size") is None and model.get("in_size") is not None:
        wanted["out_size"] = model["in_size"]
    for key, value in wanted.items():
        if model.get(key) is None:
            model[key] = value
        elif model[key] != value:
            what = {"in_channels": f"{len(channels)} channels {channels}",
                    "classes": f"{task['classes']} output channels {task['names']}",
                    "out_size": f"slices of {size}x{size}"}[key]
            raise ConfigError(f"model.{key}: the config says {model[key]!r}, but the cache {root} "
                              f"has {what}; remove model.{key} to take it from the data")
    data = dataclasses.replace(config.data, path=str(root))
    return dataclasses.replace(config, data=data, model=model)


def check_loss_weights(config: Config, model: torch.nn.Module) -> None:
    weights = config.loss.weights
    scales = list(getattr(model, "output_scales", []))
    if weights is not None and scales and len(weights) != len(scales):
        raise ConfigError(f"loss.weights: expected {len(scales)} values, one per output scale "
                          f"{scales} (low to high), found {len(weights)}: {list(weights)}")


# --- the run ------------------------------------------------------------------------------------------


def train(config: Config, out_dir: str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train ``config`` in the run directory ``out_dir`` (see the module docstring).

    Args:
        config: the training config (``data.path`` must be set).
        out_dir: the run directory; must be empty or absent unless ``resume``/``overwrite``.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` (optimizer, scheduler, loop state);
            only the fields in :data:`jnet.training.rundir.RESUMABLE` may differ from the run's
            ``config.yaml``.
        overwrite: replace the previous run in ``out_dir``.
        quiet: no progress bar, model summary or Lightning info messages.
        callbacks: extra Lightning callbacks.

    Returns:
        The run directory; ``manifest.json`` there names the best checkpoint and its val/jaccard.

    Raises:
        ConfigError, DataError: bad config or data, before anything is written.
        JnetError: the run directory is refused (see :func:`jnet.training.rundir.claim`).
        KeyboardInterrupt: interrupted (the manifest records it; resume with ``resume=True``).
    """
    run_dir = Path(out_dir).expanduser().resolve()
    L.seed_everything(config.train.seed, workers=True, verbose=False)  # before the model is built
    # Model, data and splits are checked before the run directory is touched: bad input writes nothing.
    config, root, module, datamodule = check_run(config)

    rank0 = is_rank_zero()
    if rank0:  # a refused directory says so before Lightning announces the hardware
        rundir.check_contents(run_dir, resume=resume, overwrite=overwrite)
    created = not run_dir.exists()
    with _process_state(quiet):
        # Made before the run directory is claimed: bad hardware settings fail with nothing written.
        io = AtomicCheckpointIO(run_dir)
        trainer = _trainer(config, run_dir, quiet, callbacks, io)
        lock = rundir.claim(run_dir, resume=resume, overwrite=overwrite) if rank0 else None
        status = "failed"
        try:
            previous = None
            if resume and rank0:  # every check, the ones evaluate and export make included,
                previous = rundir.check_resume(run_dir, config, root)  # before a file changes
                check_resumable(rundir.last_checkpoint(run_dir), module)
            manifest = rundir.begin(run_dir, config, module.info, root, previous) if rank0 else {}
            io.checksums = dict(manifest.get("checksums") or {})
            try:
                _fit(trainer, module, datamodule, rundir.last_checkpoint(run_dir) if resume else None)
                status = "interrupted" if trainer.interrupted else "finished"
            except OSError as e:  # disk full, read-only, I/O error: name the file
                raise JnetError(f"training in {run_dir} stopped by an I/O error on "
                                f"{e.filename or 'a file'}: {e.strerror or e}; the last complete "
                                f"checkpoint, if any, is {rundir.last_checkpoint(run_dir)}") from e
            finally:
                if rank0:
                    epochs = max(int(trainer.current_epoch), int(manifest.get("epochs_done") or 0))
                    _close_manifest(run_dir, manifest, status, _best(trainer, run_dir, module),
                                    epochs, module, io.checksums)
        except (ConfigError, DataError, CheckpointError):
            if created and rank0 and not any((run_dir / "checkpoints").glob("*.ckpt")):
                shutil.rmtree(run_dir, ignore_errors=True)  # refused: leave nothing behind
            raise
        finally:
            if lock is not None:
                lock.release()
    if status == "interrupted":
        raise KeyboardInterrupt
    return run_dir


def check_run(config: Config) -> tuple[Config, Path, JNetModule, L.LightningDataModule]:
    """Everything :func:`train` checks before it writes a file: the prepared data, the config
    against it, the model it builds, the loss weights and the splits (``setup("fit")``).

    Returns:
        The config filled from the cache, the cache's directory, the Lightning module and the
        data module, set up for fitting.

    Raises:
        ConfigError, DataError: naming what is wrong.
    """
    root, prepared = read_prepared(config)
    config = fill_from_cache(config, prepared, root)
    module = JNetModule(config, prepared)
    check_loss_weights(config, module.model)
    datamodule = _datamodule(config, root, module.model.in_size)
    datamodule.setup("fit")  # reads splits.json: a leak or an empty split is refused here
    return config, root, module, datamodule


def check_resumable(path: Path, module: JNetModule) -> None:
    """Refuse a ``last.ckpt`` that is corrupt, pickled, changed since it was written, or of another
    model than the config's, as :func:`jnet.training.checkpoint.load_model` does.

    Raises:
        CheckpointError: naming the file and what is wrong.
    """
    ckpt = read_checkpoint(path)
    model_from_checkpoint(ckpt, path, expect_config=module.model.config)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer or loop state): "
                              f"it cannot be resumed; start a new run from it instead")


def _close_manifest(run_dir: Path, manifest: dict, status: str, best: Optional[dict],
                    epochs: int, module: JNetModule, checksums: Mapping[str, str]) -> None:
    closed = rundir.end_session(manifest, status, best=best or manifest.get("best"), epochs_done=epochs,
                                checksums=dict(sorted(checksums.items())))
    # info.json also says how validation went: a degenerate best model is named, not hidden
    info = {**module.info, "validation": {
        "best_epoch": (module.best_validation() or {}).get("epoch"),
        "degenerate": (best or {}).get("degenerate"),
        "degenerate_epochs": [h["epoch"] for h in module.history if h["degenerate"]]}}
    for name, payload in (("manifest.json", closed), ("info.json", info)):
        try:
            write_json(run_dir / name, payload)
        except (OSError, JnetError) as e:  # e.g. the disk is full: keep the error that stopped training visible
            warnings.warn(f"{run_dir / name}: could not record the session's end ({e})")
    try:
        plot_curves(run_dir)
    except (OSError, JnetError, ValueError) as e:  # a picture must never fail a run
        warnings.warn(f"{run_dir / CURVES}: not drawn ({e})")


def _no_advert(record: logging.LogRecord) -> bool:
    """False for Lightning's tip that advertises its cloud logger: not a message about the run."""
    return "litlogger" not in record.getMessage()


@contextlib.contextmanager
def _process_state(quiet: bool) -> Iterator[None]:
    """Restore what a Trainer changes for the whole process: deterministic-algorithm flags, the
    SIGINT handler (Lightning ignores Ctrl+C after one), and, with ``quiet``, Lightning's log level.
    Meanwhile Lightning's advertising tip is dropped."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    sigint = signal.getsignal(signal.SIGINT)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    # Lightning's info messages go through the logger of whichever rank_zero module set it last
    tips = [logging.getLogger(f"{name}.utilities.rank_zero") for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in tips:
        logger.addFilter(_no_advert)
    if quiet:  # no "GPU available", tips, ...
        for logger in loggers:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for logger in tips:
            logger.removeFilter(_no_advert)


def is_rank_zero() -> bool:
    """True in the process that owns the run directory (rank 0 of torchrun/SLURM/DDP, or alone)."""
    return rank_zero_only.rank == 0


def _trainer(config: Config, run_dir: Path, quiet: bool, extra: Sequence[L.Callback],
             io: AtomicCheckpointIO) -> L.Trainer:
    from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, LearningRateMonitor,
                                             ModelCheckpoint)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    t = config.train
    # Two callbacks: Lightning 2.6 writes save_last only when a top-k checkpoint was written in the
    # same step, so a run whose score stalls would leave last.ckpt behind.
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=MONITOR,
                           mode="max", save_top_k=1, auto_insert_metric_name=False,
                           enable_version_counter=False)
    # last.ckpt at every epoch end, also between validations (train.val_every > 1).
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None,
                           save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    callbacks: list[Any] = [best, last, EpochSeed(t.seed), LearningRateMonitor("step"), *extra]
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=t.early_stopping))
    if t.ema is not None:
        # validation and every checkpoint see the averaged weights; a resume restores both
        callbacks.append(EMAWeightAveraging(decay=t.ema))
    loggers = [CSVLogger(run_dir / "logs", name="csv"),
               TensorBoardLogger(run_dir / "logs", name="tb", default_hp_metric=False)]
    devices = list(t.devices) if isinstance(t.devices, tuple) else t.devices
    try:
        trainer = L.Trainer(
            max_epochs=t.epochs, accelerator=t.accelerator, devices=devices, strategy=t.strategy,
            num_nodes=t.num_nodes, precision=t.precision,
            deterministic="warn" if t.deterministic else None,
            callbacks=callbacks, logger=loggers, default_root_dir=run_dir, plugins=[io],
            enable_progress_bar=not quiet, enable_model_summary=not quiet,
            # None when 1.0: Lightning then does not announce "100% of the batches will be used".
            limit_train_batches=None if t.limit_train_batches == 1.0 else t.limit_train_batches,
            limit_val_batches=None if t.limit_val_batches == 1.0 else t.limit_val_batches,
            check_val_every_n_epoch=t.val_every, log_every_n_steps=t.log_every,
        )
    except (MisconfigurationException, ValueError, TypeError) as e:
        raise ConfigError(f"train: Lightning refused the hardware/precision settings "
                          f"(accelerator={t.accelerator!r}, devices={t.devices!r}, strategy="
                          f"{t.strategy!r}, num_nodes={t.num_nodes}, precision={t.precision!r}): {e}") from e
    return trainer


def _datamodule(config: Config, root: Path, in_size: int) -> L.LightningDataModule:
    t = config.train
    return PreparedDataModule(root, in_size, downsample=config.data.downsample,
                              batch_size=t.batch_size, num_workers=t.num_workers,
                              fold=config.data.fold, augment=t.augment, seed=t.seed,
                              train_downsample=config.data.train_downsample)


def _fit(trainer: L.Trainer, module: JNetModule, datamodule: Any, ckpt: Optional[Path]) -> None:
    try:
        with warnings.catch_warnings():
            # Resuming writes into a checkpoint directory that is not empty, by design.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            # Small caches have fewer batches than the logging interval; the epoch loss is logged anyway.
            warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging")
            # Emitted inside Lightning itself on recent torch; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None,
                        weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl+C into sys.exit(1) after shutting down cleanly; a library must not exit.
        if not trainer.interrupted:
            raise


def _best(trainer: L.Trainer, run_dir: Path, module: JNetModule) -> Optional[dict]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = next((c for c in trainer.callbacks
                     if isinstance(c, ModelCheckpoint) and c.monitor == MONITOR), None)
    if callback is None or not callback.best_model_path:
        return None
    score = callback.best_model_score
    path = Path(callback.best_model_path)
    return {"checkpoint": str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path),
            "val_jaccard": float(score) if score is not None else None,
            "degenerate": (module.best_validation() or {}).get("degenerate")}
