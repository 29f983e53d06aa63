"""Labels of a discovered dataset: the ``--label-map`` argument, the tumour region table and the
task dict built from a source's label metadata (see ``jnet.transforms.tasks`` and ``docs/design.md``).
"""
from __future__ import annotations

import re
from typing import Sequence

from jnet.errors import ConfigError
from jnet.sources.types import TASK_KINDS, DatasetSource
from jnet.utils.options import choose


#: Overlapping tumour regions per (layout, edition): region name -> source label values.
#: The one place that defines them (BraTS: 1 NCR, 2 ED, 4 ET up to 2021, ET = 3 from 2023;
#: MSD Task01: 1 edema, 2 non-enhancing, 3 enhancing).
REGIONS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {
    ("brats", "2018-2020"): {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ("brats", "2021"): {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ("brats", "2023"): {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    ("msd", "Task01_BrainTumour"): {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
}


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"0:0,255:1"`` -> ``{0: 0, 255: 1}`` (the ``--label-map`` argument); None/empty -> None."""
    if text is None or not text.strip():
        return None
    mapping: dict[int, int] = {}
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError(item)
            src, dst = int(parts[0]), int(parts[1])
        except ValueError:
            raise ConfigError(
                f"--label-map: expected comma-separated SOURCE:TARGET integer pairs like 0:0,255:1, "
                f"found {item.strip()!r}"
            ) from None
        if src in mapping:
            raise ConfigError(f"--label-map: source value {src} is mapped twice")
        mapping[src] = dst
    return mapping


def region_table(source: DatasetSource) -> dict[str, tuple[int, ...]] | None:
    """The regions ``source`` declares, else those of :data:`REGIONS`; None without a table or with
    a label map in use."""
    if source.label_map is not None:
        return None
    if source.regions:
        return dict(source.regions)
    if source.edition is None:
        return None
    return REGIONS.get((source.layout, source.edition))


def _pick(names: Sequence[str], wanted: str, what: str) -> str:
    for name in names:
        if name.lower() == wanted.lower():
            return name
    raise ConfigError(f"structures: no {what} {wanted!r} in this dataset; available: {', '.join(names)}")


def _whole_name(source: DatasetSource, regions: dict) -> str:
    """Name of 'all labels > 0': WT for tumours, the organ for an MSD task (Task05_Prostate ->
    prostate), else foreground."""
    if "WT" in regions:
        return "WT"
    if source.layout == "msd" and source.edition and re.fullmatch(r"Task\d+_[A-Za-z]+", source.edition):
        return source.edition.split("_", 1)[1].lower()
    return "foreground"


def make_task(source: DatasetSource, kind: str, structures: Sequence[str] | None = None) -> dict:
    """Build the task dict (``docs/design.md``, Tasks) from the dataset's label metadata.

    - ``binary``: one channel; all labels > 0 (named ``WT`` where the dataset has tumour regions,
      the organ for an MSD task such as ``prostate``, else ``foreground``), or the one named
      label/region in ``structures``.
    - ``multiclass``: ``background`` + each label (or the named ones; the rest become background).
    - ``regions``: the overlapping regions of :data:`REGIONS` (BraTS WT/TC/ET), or the named ones.

    Raises:
        ConfigError: unknown kind or structure names (listing the valid ones), or no regions.
    """
    choose(kind, TASK_KINDS, "task", "kind")
    fg = {v: n for v, n in sorted(source.labels.items()) if v != 0}
    if not fg:
        raise ConfigError(f"task: {source.root} declares no foreground labels ({source.labels})")
    regions = region_table(source) or {}
    structures = [s.strip() for s in structures if s.strip()] if structures else None
    if kind == "binary":
        if not structures:
            labels = {_whole_name(source, regions): sorted(fg)}
        else:
            if len(structures) != 1:
                raise ConfigError(f"structures: a binary task takes one structure, found {structures}")
            choices = list(fg.values()) + list(regions)
            name = _pick(choices, structures[0], "label or region")
            values = regions[name] if name in regions else [v for v, n in fg.items() if n == name]
            labels = {name: sorted(values)}
        return {"kind": "binary", "names": list(labels), "classes": 1, "labels": labels}
    if kind == "multiclass":
        chosen = [_pick(list(fg.values()), s, "label") for s in structures] if structures else list(fg.values())
        labels = {n: [v for v, m in fg.items() if m == n] for n in chosen}
        used = {v for vs in labels.values() for v in vs}
        labels = {"background": sorted(set(source.labels) - used | {0}), **labels}
        return {"kind": "multiclass", "names": list(labels), "classes": len(labels), "labels": labels}
    if not regions:
        why = "a label map is in use" if source.label_map is not None else "no region table"
        raise ConfigError(
            f"task: kind 'regions' needs overlapping regions, but {source.layout} dataset "
            f"{source.edition or source.root.name} has none ({why}; regions exist for "
            f"{', '.join('/'.join(k) for k in REGIONS)}); use binary or multiclass"
        )
    chosen = [_pick(list(regions), s, "region") for s in structures] if structures else list(regions)
    labels = {n: sorted(regions[n]) for n in chosen}
    return {"kind": "regions", "names": list(labels), "classes": len(labels), "labels": labels}
