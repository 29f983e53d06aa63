"""What a model predicts, and how cached labels become training targets and metrics input.

A task has a ``kind``:

- ``binary``: one output channel (sigmoid); cached label 0/1.
- ``multiclass``: ``classes`` output channels including background (softmax); cached label
  0..classes-1.
- ``regions``: one output channel per (possibly overlapping) region (sigmoid each); cached label is
  a bitmask (bit i set = pixel inside region i), e.g. BraTS WT/TC/ET.

Cached labels are ``uint8`` maps of shape ``(..., H, W)``; see ``docs/design.md``.
"""
from __future__ import annotations

import torch

from jnet.sources.types import TASK_KINDS as KINDS
from jnet.utils.options import choose


def check_kind(kind: str) -> str:
    return choose(kind, KINDS, "task kind")


def target_from_label(label: torch.Tensor, kind: str, classes: int) -> torch.Tensor:
    """Turn a cached label map into the loss target.

    Shape: ``label (B, H, W)`` integer -> binary ``(B, 1, H, W)`` float, multiclass ``(B, H, W)``
    long, regions ``(B, R, H, W)`` float.
    """
    check_kind(kind)
    if kind == "binary":
        return (label > 0).unsqueeze(1).float()
    if kind == "multiclass":
        return label.long()
    bits = torch.arange(classes, device=label.device).view(1, -1, 1, 1)
    return ((label.long().unsqueeze(1) >> bits) & 1).float()


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Sigmoid (binary, regions) or softmax over channels (multiclass). Shape kept."""
    check_kind(kind)
    return torch.softmax(logits, dim=1) if kind == "multiclass" else torch.sigmoid(logits)


def masks_from_logits(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Hard per-structure masks for metrics: ``(B, C, H, W)`` logits -> ``(B, K, H, W)`` bool,
    one channel per foreground structure (multiclass drops the background channel)."""
    check_kind(kind)
    if kind == "multiclass":
        index = logits.argmax(dim=1)
        return masks_from_label(index, kind, logits.shape[1])
    return logits > 0


def masks_from_label(label: torch.Tensor, kind: str, classes: int) -> torch.Tensor:
    """Cached label ``(B, H, W)`` -> ``(B, K, H, W)`` bool foreground masks (as masks_from_logits)."""
    check_kind(kind)
    if kind == "binary":
        return (label > 0).unsqueeze(1)
    if kind == "multiclass":
        fg = torch.arange(1, classes, device=label.device).view(1, -1, 1, 1)
        return label.long().unsqueeze(1) == fg
    return target_from_label(label, kind, classes).bool()


def label_from_logits(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` -> cached-label encoding ``(B, H, W)`` uint8 (inverse of
    target_from_label up to thresholding)."""
    check_kind(kind)
    if kind == "binary":
        return (logits[:, 0] > 0).to(torch.uint8)
    if kind == "multiclass":
        return logits.argmax(dim=1).to(torch.uint8)
    bits = (2 ** torch.arange(logits.shape[1], device=logits.device)).view(1, -1, 1, 1)
    return ((logits > 0).long() * bits).sum(dim=1).to(torch.uint8)


def structure_names(task: dict) -> list[str]:
    """Names of the foreground structures that metrics report, in channel order."""
    names = list(task["names"])
    return names[1:] if task["kind"] == "multiclass" else names


def encode_label(label, task: dict):
    """Map a dataset label volume (any integer array) to the cached ``uint8`` encoding of ``task``.

    ``task["labels"]`` maps each output name to the source label values it covers.
    Shape: kept.
    """
    import numpy as np

    kind = check_kind(task["kind"])
    names = list(task["names"])
    out = np.zeros(np.shape(label), dtype=np.uint8)
    if kind == "binary":
        out[np.isin(label, task["labels"][names[0]])] = 1
    elif kind == "multiclass":
        for i, name in enumerate(names[1:], start=1):
            out[np.isin(label, task["labels"][name])] = i
    else:
        for i, name in enumerate(names):
            out[np.isin(label, task["labels"][name])] |= np.uint8(1 << i)
    return out


def code_count(task: dict) -> int:
    """How many cached-label codes a prediction of ``task`` can hold: 0/1 (binary), a class index
    (multiclass), or any set of region bits (regions)."""
    kind, names = check_kind(task["kind"]), task["names"]
    return 2 if kind == "binary" else len(names) if kind == "multiclass" else 1 << len(names)


def decode_label(encoded, task: dict):
    """Inverse of encode_label for writing masks in the dataset's own label values.

    binary -> the first source value of the foreground; multiclass -> each class's first source
    value; regions -> hierarchical, as nnU-Net's ``regions_class_order``: regions are painted
    from the largest label set to the smallest (BraTS: WT, TC, ET), each with the value that is
    its own (in it and in no region inside it: WT -> 2, TC -> 1, ET -> 4). Every voxel with any
    region predicted gets a label, also for combinations a nested label map cannot hold (ET
    without TC -> 4, TC without WT -> 1). Shape: kept.

    A task prepared with a label map (``--label-map 0:0,255:1``) carries ``file_values`` and is
    written back in the files' own values (0/255).

    Returns ``uint8`` where every value of the task fits (else ``int16``/``int32``), and
    ``encoded`` itself (as uint8) where the values are the codes (the usual binary 0/1 and
    multiclass 0..C-1 tasks): nothing to look up.
    """
    import numpy as np

    kind = check_kind(task["kind"])
    names = list(task["names"])
    # The rule paints a table of all 256 uint8 codes once; the volume is then one look-up
    # (painting the volume itself with masks is 30x slower on a 320x320x20 prediction).
    codes = np.arange(256)
    table = np.zeros(256, dtype=np.int16)
    if kind == "binary":
        table[codes > 0] = task["labels"][names[0]][0]
    elif kind == "multiclass":
        for i, name in enumerate(names[1:], start=1):
            table[i] = task["labels"][name][0]
    else:
        for i, value in region_order(task):
            table[(codes >> i) & 1 == 1] = value
    back = task.get("file_values")
    if back:  # the files' own values, mapped in the same table
        lookup = np.arange(max(int(table.max()), *map(int, back)) + 1, dtype=np.int32)
        for mapped, raw in back.items():
            lookup[int(mapped)] = raw
        table = lookup[table].astype(np.int32 if max(back.values()) > 32767 else np.int16)
    encoded = np.asarray(encoded, dtype=np.uint8)
    if table.min() >= 0 and table.max() <= 255:
        table = table.astype(np.uint8)
    reachable = code_count(task)
    if table.dtype == np.uint8 and np.array_equal(table[:reachable], codes[:reachable]):
        return encoded
    return np.take(table, encoded)


def region_order(task: dict) -> list[tuple[int, int]]:
    """``(bit, label value)`` of each region of a regions task, in painting order (outer first)."""
    sets = {name: set(task["labels"][name]) for name in task["names"]}
    order = sorted(range(len(task["names"])), key=lambda i: (-len(sets[task["names"][i]]), i))
    painted = []
    for i in order:
        own = sets[task["names"][i]]
        inner = set().union(*(v for n, v in sets.items() if v < own)) if own else set()
        painted.append((i, min(own - inner or own)))
    return painted
