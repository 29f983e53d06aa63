"""The Lightning data module over a slice cache: loaders, batch layout, config errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import aligned_cache

from jnet.cache.reader import SliceDataset
from jnet.errors import ConfigError
from jnet.training.datamodule import PreparedDataModule

S = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return aligned_cache(tmp_path_factory.mktemp("dm"), S)


def test_datamodule_loaders_and_attributes(cache):
    dm = PreparedDataModule(cache, in_size=4, batch_size=4, eval_batch_size=5, seed=0)
    assert (dm.size, dm.channels, dm.in_channels, dm.classes) == (S, ["MRI"], 1, 1)
    assert dm.task["kind"] == "binary"
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert all(lr.shape == (4, 1, 4, 4) for lr, _, _ in train)  # incomplete last batch dropped
    assert len(train) == len(dm.dataset("train")) // 4
    lr, hr, meta = next(iter(dm.val_dataloader()))
    assert lr.dtype == torch.float32 and hr.dtype == torch.uint8 and hr.shape[1:] == (S, S)
    assert meta["index"].dtype == torch.int64 and len(meta["case_id"]) == len(lr)
    val_rows = torch.cat([m["index"] for _, _, m in dm.val_dataloader()])
    assert torch.equal(val_rows, torch.from_numpy(dm.dataset("val").rows))  # in order, all rows
    test_rows = torch.cat([m["index"] for _, _, m in dm.predict_dataloader()])
    assert torch.equal(test_rows, torch.from_numpy(dm.dataset("test").rows))
    assert set(val_rows.tolist()).isdisjoint(test_rows.tolist())


def test_datamodule_config_errors(cache):
    with pytest.raises(ConfigError, match="data.in_size"):
        PreparedDataModule(cache, in_size=32)
    with pytest.raises(ConfigError, match="data.downsample"):
        PreparedDataModule(cache, in_size=4, downsample="cubic")
    with pytest.raises(ConfigError, match="data.fold"):
        SliceDataset(cache, "train", fold=3)
