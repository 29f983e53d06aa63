"""A synthetic skull-stripped brain MRI (FLAIR, T1, T1ce, T2) with a glioma, for ``jnet.synth.generate``.

Coordinates are millimetres: +x left-right, +y posterior, +z cranial. The brain has a folded
cortex with thin sulci, white matter, deep gray matter, ventricles with choroid plexus, cortical
veins, white-matter hyperintensities and sometimes an old cyst. The glioma has finger-like edema
(ED) around a core that is ring-enhancing (a thin enhancing rim, ET, around necrosis, NCR),
solid-enhancing, or non-enhancing (labelled 1, like NCR); sometimes a second focus.
"""
from __future__ import annotations

import numpy as np

from jnet.synth import shapes as S
from jnet.synth.shapes import Blob

(BG, CSF, GM, WM, DGM, ED, NCR, ET, NET, WMH, CHOROID, VEIN, CYST) = range(13)
#: Relative intensity per tissue: (FLAIR, T1, T1ce, T2, texture amplitude). Ventricles and cysts
#: are bright on T2 like edema, hyperintensities bright on FLAIR, veins and plexus enhance like ET.
TISSUES = {
    BG: (0.0, 0.0, 0.0, 0.0, 0.0), CSF: (0.12, 0.25, 0.27, 1.55, 0.03),
    GM: (0.78, 0.62, 0.66, 0.88, 0.05), WM: (0.62, 0.92, 0.95, 0.58, 0.04),
    DGM: (0.72, 0.72, 0.75, 0.72, 0.05), ED: (1.2, 0.55, 0.6, 1.15, 0.12),
    NCR: (0.8, 0.32, 0.36, 1.35, 0.2), ET: (1.0, 0.62, 1.5, 0.95, 0.15),
    NET: (1.15, 0.5, 0.54, 1.2, 0.15), WMH: (1.15, 0.8, 0.82, 0.95, 0.08),
    CHOROID: (0.55, 0.7, 1.35, 0.9, 0.1), VEIN: (0.35, 0.55, 1.5, 0.35, 0.05),
    CYST: (0.15, 0.28, 0.3, 1.5, 0.03),
}
SEG = {ED: 2, NCR: 1, NET: 1, ET: 4}  # tissue -> BraTS 2018-2021 label


def _cortex(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, brain: Blob,
            fold_mm: float = 9.0, cell_mm: float = 7.0):
    """White matter inside a folded gray-matter band with thin CSF sulci; the band reaches up to
    about ``fold_mm`` deeper where folded (correlation length ``cell_mm``). Returns
    ``(box, inside, mask)``."""
    box, q = brain.field(grid)
    inside = q < 1
    fold = np.maximum(S.smooth_noise(rng, inside.shape, cell_mm, grid.spacing), 0)
    sulci = np.abs(S.smooth_noise(rng, inside.shape, 9.0, grid.spacing)) < 0.12
    depth = (1 - q) * 60.0  # about the depth below the surface, mm
    x = grid.coords(box)[0]
    view = tissue[box]
    view[inside] = WM
    view[inside & (depth < 2.5 + fold_mm * fold)] = GM
    view[inside & ((depth < 1.0) | (sulci & (depth < 4 + fold_mm * 4 / 3 * fold)))] = CSF
    view[inside & (np.abs(x - brain.centre[0]) < 0.8) & (depth < 30)] = CSF  # interhemispheric fissure
    return box, inside, S.full_mask(grid.shape, box, inside)


def _structures(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, mask: np.ndarray, c: tuple) -> None:
    """Deep gray matter, ventricles and plexus, veins, hyperintensities, sometimes a cyst."""
    u = rng.uniform
    cx, cy, cz = c
    for side in (-1, 1):
        nuclei = Blob.of((cx + side * u(14, 22), cy + u(-8, 8), cz + u(-10, 0)), (u(8, 12), u(12, 18), u(8, 12)),
                         side * u(0, .3), S.random_lobes(rng, 0.1))
        S.paint(tissue, grid, nuclei, DGM, where=mask)
        width = u(3, 6) * u(0.6, 1.5)  # ventricles widen with age
        ventricle = Blob.of((cx + side * u(5, 9), cy + u(-12, 2), cz + u(5, 15)),
                            (width, (u(18, 26), u(20, 30)), (u(6, 10), u(8, 14))), side * u(.1, .3),
                            S.random_lobes(rng, 0.15, twist=1.0))
        S.paint(tissue, grid, ventricle, CSF, where=mask)
        x, y, z = ventricle.centre
        plexus = Blob.of((x, y + u(8, 16), z - u(0, 4)), (u(2, 4), u(3, 6), u(2, 4)), 0, S.random_lobes(rng, 0.2))
        S.paint(tissue, grid, plexus, CHOROID, where=tissue == CSF)
    S.paint(tissue, grid, Blob.of((cx, cy + u(0, 8), cz - u(2, 8)), (1.5, u(10, 14), u(6, 9))), CSF, where=mask)
    for _ in range(int(rng.integers(3, 9))):  # cortical veins near the surface
        angle, r = u(0, 2 * np.pi), 1 - u(0.02, 0.08)
        at = (cx + 62 * r * np.cos(angle), cy + 80 * r * np.sin(angle), cz + 55 * u(-0.5, 0.9))
        vein = Blob.of(at, (u(1, 2.5), u(1, 2.5), u(5, 15)), u(0, 6.3), S.random_lobes(rng, 0.3, (2, 3), 2.0))
        S.paint(tissue, grid, vein, VEIN, where=mask)
    for _ in range(int(rng.integers(0, 9))):  # white-matter hyperintensities near the ventricles
        at = (cx + rng.choice([-1, 1]) * u(8, 25), cy + u(-30, 30), cz + u(0, 25))
        S.paint(tissue, grid, Blob.of(at, (u(1.5, 6),) * 3, 0, S.random_lobes(rng, 0.2)), WMH, where=tissue == WM)
    if u() < 0.15:  # an old cyst or infarct: CSF-like, unlabelled
        at = (cx + rng.choice([-1, 1]) * u(20, 45), cy + u(-40, 40), cz + u(-20, 30))
        S.paint(tissue, grid, Blob.of(at, (u(3, 10),) * 3, 0, S.random_lobes(rng, 0.15)), CYST, where=tissue == WM)


def _tumour(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, mask: np.ndarray,
            centre: tuple, radius: float) -> None:
    """One glioma: edema in the parenchyma, then the core (ring, solid or non-enhancing)."""
    u = rng.uniform
    reach = radius + u(4, 28)
    edema = Blob.of(tuple(c + u(-3, 3) for c in centre), [(reach * u(.75, 1.2), reach * u(.75, 1.2)) for _ in range(3)],
                    u(0, 6.3), S.random_lobes(rng, 0.35, (2, 3, 5, 7), 2.0),
                    ((1, u(-.15, .15), u(0, 6.3)), (2, u(-.1, .1), u(0, 6.3))))
    S.paint(tissue, grid, edema, ED, where=mask & np.isin(tissue, (WM, GM, DGM, WMH)))
    core = Blob.of(centre, [(radius * u(.8, 1.2), radius * u(.8, 1.2)) for _ in range(3)], u(0, 6.3),
                   S.random_lobes(rng, 0.18, (2, 3, 4, 5), 1.0), ((1, u(-.1, .1), u(0, 6.3)),))
    kind = rng.choice(["ring", "solid", "non-enhancing"], p=[0.6, 0.2, 0.2])
    if kind == "ring":  # necrosis inside a 1.5-5 mm enhancing rim
        S.paint(tissue, grid, core, ET, where=mask)
        S.paint(tissue, grid, core.scaled(1 - u(1.5, 5.0) / radius), NCR, where=mask)
        return
    S.paint(tissue, grid, core, ET if kind == "solid" else NET, where=mask)
    inner = tissue == (ET if kind == "solid" else NET)
    idx = np.nonzero(inner)
    for _ in range(int(rng.integers(0, 3)) if idx[0].size else 0):  # necrotic or enhancing spots
        k = int(rng.integers(idx[0].size))
        at = tuple(float(grid.axis(d)[idx[d][k]]) for d in range(3))
        spot = Blob.of(at, (u(1.5, 4),) * 3, 0, S.random_lobes(rng, 0.2))
        S.paint(tissue, grid, spot, NCR if kind == "solid" else ET, where=inner)


def _tumour_centre(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, c: tuple) -> tuple:
    """A point in the parenchyma of one hemisphere (20 tries, else the last one)."""
    u = rng.uniform
    side = rng.choice([-1, 1])
    for _ in range(20):
        centre = (c[0] + side * u(12, 45), c[1] + u(-55, 55), c[2] + u(-25, 35))
        idx = tuple(int(round(v / s + (n - 1) / 2)) for v, s, n in zip(centre, grid.spacing, grid.shape))
        if all(0 <= i < n for i, n in zip(idx, grid.shape)) and tissue[idx] in (WM, GM, DGM):
            break
    return centre


def brats_case(rng: np.random.Generator, size: int, slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic brain MRI on a ``size x size x slices`` grid covering 240 x 240 x 155 mm.

    Returns:
        ``(image int16 (4, X, Y, Z) [FLAIR, T1, T1ce, T2], seg uint8 (X, Y, Z) [0, 1 NCR, 2 ED, 4 ET],
        affine (4, 4))``; images are 0 outside the brain, as in the skull-stripped releases.
    """
    u = rng.uniform
    grid = S.Grid((size, size, slices), (240.0 / size, 240.0 / size, 155.0 / slices))
    tissue = np.zeros(grid.shape, np.uint8)
    c = (u(-4, 4), u(-6, 6), u(-8, 4))
    brain = Blob.of(c, (u(60, 70), (u(72, 84), u(75, 88)), (u(50, 58), u(58, 66))), u(-.08, .08),
                    S.random_lobes(rng, 0.04), ((1, u(-.04, .04), u(0, 6.3)), (2, u(-.03, .03), u(0, 6.3))))
    box, inside, mask = _cortex(rng, grid, tissue, brain)
    _structures(rng, grid, tissue, mask, c)
    for n in range(1 if u() > 0.12 else 2):  # a glioma, sometimes a second focus
        _tumour(rng, grid, tissue, mask, _tumour_centre(rng, grid, tissue, c), u(8, 28) if n == 0 else u(4, 10))
    seg = np.zeros(grid.shape, np.uint8)
    for code, value in SEG.items():
        seg[tissue == code] = value
    table, grain = S.tissue_tables(rng, TISSUES, {
        ED: (u(1.05, 1.4), .55, .6, u(1.0, 1.3), .12), NCR: (u(.5, 1.2), .32, .36, u(1.25, 1.5), .2),
        ET: (u(.9, 1.2), .62, u(1.3, 1.7), u(.85, 1.05), .15)})
    # Render the brain's bounding box only: outside the brain the images are exactly 0.
    sub = tissue[box]
    factor = S.modulation(sub, grain, S.smooth_noise(rng, sub.shape, 3.0, grid.spacing))
    image = np.zeros((4, *grid.shape), np.int16)
    for ch in range(4):
        gain = u(300, 1200)
        rendered = S.render(sub, table[:, ch], factor, 0.5, grid.spacing)
        rendered *= S.bias_field(rng, grid, 0.1, box)
        noisy = S.rician(rng, rendered * np.float32(gain), u(0.015, 0.035) * gain)
        image[ch][box] = np.where(inside, S.to_int16(noisy), 0)
    affine = np.diag([-grid.spacing[0], -grid.spacing[1], grid.spacing[2], 1.0])
    affine[1, 3] = (size - 1) * grid.spacing[1]  # as the BraTS releases: LPS-flipped x and y
    return image, seg, affine


#: The range of the scanner's gray/white contrast of ``wm_case`` subjects, relative to the usual.
WM_CONTRAST = (0.5, 1.3)
#: The range of ``wm_case`` subjects' head size, as a scale of the mean brain's radii.
WM_SCALE = (0.82, 1.08)
#: How far from the middle of the field ``wm_case`` places a head by default, in mm, per in-plane
#: axis (left-right, front-back): uniform in +-15 and +-18.
WM_SHIFT = (15.0, 18.0)


def _centre_offset(u, half_range: float, shift: tuple[float, float] | None) -> float:
    """One in-plane coordinate of the head's centre (mm): uniform in ``+-half_range``, or, with
    ``shift``, at a distance in ``shift`` on a random side."""
    if shift is None:
        return u(-half_range, half_range)
    v = u(-1, 1)
    return float(np.sign(v)) * (shift[0] + (shift[1] - shift[0]) * abs(v))


def wm_case(rng: np.random.Generator, size: int, slices: int,
            contrast: tuple[float, float] = WM_CONTRAST, scale: tuple[float, float] = WM_SCALE,
            shift: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic T1-weighted brain MRI for white-matter segmentation, ``size x size x slices``
    covering 240 x 240 x 100 mm through the cerebrum.

    Made for the question J-Net asks, whether a learned head recovers detail a coarse input lost:
    the white matter reaches into every gyrus as thin, branching fingers (one or two millimetres,
    far below a 15 mm pixel of a 16x16 input) and is labelled whole, white-matter lesions included;
    deep gray matter and the other tissue are not. Every subject differs: head size, position and
    in-plane tilt; the scanner's gray/white contrast (from about half to 1.3 times the usual), its
    point-spread blur, bias field and noise; sometimes a tumour that displaces white matter. So
    held-out subjects are not copies of the training ones. ``contrast`` sets the range of the
    gray/white contrast; another range gives the same subjects (the same labels, for a seed) at a
    contrast a model trained on the default range has not seen. ``scale`` (the head size, a scale
    of the mean brain) and ``shift`` (the head centre's distance from the middle of the field per
    in-plane axis, mm, on a random side; None: :data:`WM_SHIFT`) move the head outside its usual
    size or position; everything else is drawn from its usual range (the anatomy's details anew,
    since they depend on the head's geometry). A head that reaches past the 240 mm field is cut
    at its edge.

    Returns:
        ``(image int16 (X, Y, Z), label uint8 (X, Y, Z) [0, 1 white matter], affine (4, 4))``.
    """
    u = rng.uniform
    grid = S.Grid((size, size, slices), (240.0 / size, 240.0 / size, 100.0 / slices))
    tissue = np.zeros(grid.shape, np.uint8)
    c = (_centre_offset(u, WM_SHIFT[0], shift), _centre_offset(u, WM_SHIFT[1], shift), u(-4, 12))
    k = u(*scale)
    brain = Blob.of(c, (k * u(60, 70), (k * u(72, 84), k * u(75, 88)), (u(50, 58), u(58, 66))),
                    u(-0.35, 0.35), S.random_lobes(rng, 0.05),
                    ((1, u(-.04, .04), u(0, 6.3)), (2, u(-.03, .03), u(0, 6.3))))
    box, inside, mask = _cortex(rng, grid, tissue, brain, fold_mm=u(22, 32), cell_mm=u(4, 5.5))
    _structures(rng, grid, tissue, mask, c)
    if u() < 0.25:
        _tumour(rng, grid, tissue, mask, _tumour_centre(rng, grid, tissue, c), u(6, 20))
    label = np.isin(tissue, (WM, WMH)).astype(np.uint8)
    table, grain = S.tissue_tables(rng, TISSUES, {})
    t1 = table[:, 1].copy()
    t1[WM] = t1[GM] + (t1[WM] - t1[GM]) * u(*contrast)  # the scanner's gray/white contrast
    sub = tissue[box]
    factor = S.modulation(sub, grain, S.smooth_noise(rng, sub.shape, 3.0, grid.spacing))
    gain = u(300, 1200)
    rendered = S.render(sub, t1, factor, u(0.4, 1.4), grid.spacing)
    rendered *= S.bias_field(rng, grid, u(0.05, 0.3), box)
    noisy = S.rician(rng, rendered * np.float32(gain), u(0.015, 0.06) * gain)
    image = np.zeros(grid.shape, np.int16)
    image[box] = np.where(inside, S.to_int16(noisy), 0)
    affine = np.diag([-grid.spacing[0], -grid.spacing[1], grid.spacing[2], 1.0])
    affine[1, 3] = (size - 1) * grid.spacing[1]
    return image, label, affine
