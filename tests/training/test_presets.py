"""The configs shipped inside the package: names, look-up, `jnet config`, train's default."""
from __future__ import annotations

from pathlib import Path

import pytest

from jnet.cli import main
from jnet.errors import ConfigError
from jnet.training import presets
from jnet.training.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_yaml_is_package_data():
    """pyproject's package-data patterns (configs/*.yaml, configs/*/*.yaml) cover every file."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib, in the "
                                  "standard library from Python 3.11 (jnet supports 3.10)")

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["jnet"]
    files = sorted(p.relative_to(presets.root().parent) for p in presets.root().rglob("*.yaml"))
    assert files and all(any(f.match(pattern) for pattern in patterns) for f in files)
    assert len(presets.names()) == len(files)
    assert {"recommended/jnet16", "recommended/baseline32", "paper/jnet16", "sweeps/heads"} <= set(presets.names())


@pytest.mark.parametrize("spec", ["recommended/jnet16", "recommended/jnet16.yaml",
                                  "configs/recommended/jnet16.yaml"])
def test_names_and_clone_paths_find_the_built_in_file(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a clone: configs/... does not exist here
    assert presets.locate(spec) == presets.root() / "recommended" / "jnet16.yaml"
    assert load_config(presets.locate(spec)).model["head"] == "subpixel"


def test_an_existing_file_wins_and_an_unknown_name_is_named(tmp_path):
    mine = tmp_path / "recommended" / "jnet16.yaml"
    mine.parent.mkdir()
    mine.write_text("train: {epochs: 1}\n")
    assert presets.locate(mine) == mine
    with pytest.raises(ConfigError, match=r"recommended/jnt16: no such file .*did you mean 'recommended/jnet16'"):
        presets.locate("recommended/jnt16")


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == presets.names()
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every config says what it is
    assert main(["config", "show", "paper/jnet32"]) == 0
    assert capsys.readouterr().out == (presets.root() / "paper" / "jnet32.yaml").read_text()
    assert main(["config", "show", "nope"]) == 2


def test_train_without_config_uses_the_recommended_jnet(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run")]) == 2  # no data.path given
    err = capsys.readouterr().err
    assert f"config: {presets.DEFAULT_TRAIN} (built in" in err and "data.path: not set" in err
    assert not (tmp_path / "run").exists()
