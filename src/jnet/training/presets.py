"""The configs shipped inside the package: ``recommended/jnet16``, ``paper/baseline32``,
``sweeps/heads``, ... (the YAML files of ``jnet/configs/``; ``configs/`` in a clone is a link to
them), so that a ``pip install jnet`` can train without a clone.

``--config`` takes a file path or one of these names; a path such as
``configs/recommended/jnet16.yaml`` that does not exist where the command runs falls back to the
built-in file of that name, so the README's commands work outside a clone too.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from jnet.errors import ConfigError
from jnet.utils.options import did_you_mean

#: What ``jnet train`` uses without ``--config``.
DEFAULT_TRAIN = "recommended/jnet16"


def root() -> Path:
    return Path(str(resources.files("jnet") / "configs"))


def names(group: str | None = None) -> list[str]:
    """Every built-in config name (``group/name``), sorted; only those of ``group`` if given."""
    found = sorted(p.relative_to(root()).with_suffix("").as_posix() for p in root().rglob("*.yaml"))
    return [n for n in found if group is None or n.startswith(f"{group}/")]


def summary(name: str, width: int = 96) -> str:
    """The first sentence of a built-in config's header comment (cut to ``width`` characters)."""
    lines = []
    for line in locate(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            break
        lines.append(text)
    text = " ".join(lines).split(". ")[0].rstrip(".:")
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."


def locate(spec: str | os.PathLike) -> Path:
    """The file of ``spec``: an existing path as is, else the built-in config it names.

    ``recommended/jnet16``, ``recommended/jnet16.yaml`` and ``configs/recommended/jnet16.yaml``
    all name the same built-in file.

    Raises:
        ConfigError: neither a file nor a built-in name (the names are listed).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = path.as_posix()
    name = name[len("configs/"):] if name.startswith("configs/") else name
    name = name[:-len(".yaml")] if name.endswith(".yaml") else name
    if name in names():
        return root() / f"{name}.yaml"
    if path.is_absolute() or str(spec).startswith((".", "~")):  # plainly a file path, not a name
        raise ConfigError(f"{spec}: config file not found")
    raise ConfigError(f"--config: {spec}: no such file and no built-in config of that name; built-in: "
                      f"{', '.join(names())} (jnet config list){did_you_mean(name, names())}")
