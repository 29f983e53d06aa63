"""A synthetic axial prostate MRI (T2 + ADC) with PZ/TZ labels, for ``jnet.synth.generate``.

Coordinates are millimetres in the acquisition frame: +x left-right, +y posterior, +z cranial. The
prostate sits in a pelvis wider than the field of view, between the pubic bone, the obturator
muscles, the rectum behind it and the bladder and seminal vesicles above it. Its peripheral zone
(PZ, label 1) is a thin crescent, posterior and lateral, around the transition zone (TZ, label 2,
with the anterior stroma), thinner when benign hyperplasia makes the TZ large.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jnet.synth import shapes as S
from jnet.synth.shapes import Blob

(AIR, FAT, MUSCLE, MARROW, CORTEX, URINE, BWALL, RWALL, LUMEN, PZ, TZ, CAPSULE, LESION, NOD_B,
 NOD_D, SV, SVWALL, VESSEL, VOID, AFMS) = range(20)
#: Relative intensity per tissue: (T2, ADC, texture amplitude). PZ, seminal vesicles, fat and slow
#: veins share bright T2; TZ, muscle and lesions share dark T2.
TISSUES = {
    AIR: (0.0, 0.0, 0.0), FAT: (0.8, 0.1, 0.08), MUSCLE: (0.28, 0.48, 0.06),
    MARROW: (0.6, 0.12, 0.1), CORTEX: (0.06, 0.05, 0.05), URINE: (1.25, 1.0, 0.02),
    BWALL: (0.25, 0.45, 0.05), RWALL: (0.3, 0.5, 0.08), LUMEN: (0.45, 0.4, 0.3),
    PZ: (0.8, 0.65, 0.14), TZ: (0.46, 0.52, 0.16), CAPSULE: (0.3, 0.45, 0.2),
    LESION: (0.32, 0.3, 0.1), NOD_B: (0.72, 0.6, 0.1), NOD_D: (0.3, 0.42, 0.1),
    SV: (1.0, 0.72, 0.08), SVWALL: (0.35, 0.5, 0.05), VESSEL: (0.95, 0.7, 0.05),
    VOID: (0.05, 0.3, 0.05), AFMS: (0.25, 0.4, 0.08),
}
RECTAL_CONTENT = ((0.05, 0.05, 0.3), (0.9, 0.9, 0.05), (0.45, 0.35, 0.4))  # gas, fluid, stool


@dataclass(frozen=True)
class Gland:
    """Centre (mm) and half-axes of the prostate: width, anterior/posterior depth, apex/base height."""

    cx: float
    cy: float
    cz: float
    a: float
    b_ant: float
    b_post: float
    c_down: float
    c_up: float


def _pelvis(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, p: Gland) -> np.ndarray:
    """Body fat, gluteal, abdominal and obturator muscles, femoral heads, pubic bone. Returns the body mask."""
    u = rng.uniform
    body_blob = Blob.of((u(-5, 5), u(0, 10), 0), (u(110, 150), (u(70, 95), u(85, 110)), 1e4),
                        u(-.05, .05), S.random_lobes(rng, 0.02))
    body = S.full_mask(grid.shape, *S.paint(tissue, grid, body_blob, FAT))
    for side in (-1, 1):
        lobes = S.random_lobes(rng, 0.1, twist=0.5)
        for centre, axes, angle in (
            ((p.cx + side * u(45, 70), p.cy + u(45, 70), 0), (u(30, 45), u(22, 32), 1e4), side * u(.2, .6)),
            ((p.cx + side * u(20, 40), p.cy - u(55, 75), 0), (u(10, 18), u(5, 9), 1e4), side * u(0, .3)),
            ((p.cx + side * u(36, 48), p.cy + u(-5, 10), p.cz), (u(6, 11), u(18, 28), 60), side * u(.1, .4)),
        ):
            S.paint(tissue, grid, Blob.of(centre, axes, angle, lobes), MUSCLE, where=body)
        bone = Blob.of((p.cx + side * u(62, 80), p.cy + u(-12, 6), p.cz + u(-15, 15)),
                       (u(17, 25), u(17, 25), u(20, 30)), 0, S.random_lobes(rng, 0.06))
        S.paint(tissue, grid, bone, CORTEX, where=body)
        S.paint(tissue, grid, bone.scaled(0.82), MARROW, where=body)
    pubis = Blob.of((p.cx, p.cy - p.b_ant - u(14, 24), p.cz - u(0, 10)), (u(10, 16), u(5, 8), u(14, 20)))
    S.paint(tissue, grid, pubis, CORTEX)
    return body


def _neighbours(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, p: Gland) -> Blob:
    """Rectum, levator ani, bladder, seminal vesicles, vessels, venous plexus. Returns the rectum."""
    u = rng.uniform
    rectum = Blob.of((p.cx + u(-4, 4), p.cy + p.b_post + u(9, 16), p.cz), (u(12, 20), u(8, 13), 80),
                     u(-.3, .3), S.random_lobes(rng, 0.12, twist=1.0))
    S.paint(tissue, grid, rectum, RWALL)
    S.paint(tissue, grid, rectum.scaled(0.7, 0.7, 1.0), LUMEN)
    for side in (-1, 1):  # levator ani: thin muscle bands beside the prostate and rectum
        band = Blob.of((p.cx + side * (p.a + u(6, 12)), p.cy + p.b_post * u(.6, 1.2), p.cz - u(0, 8)),
                       (u(2, 4), u(15, 25), 30), side * u(.3, .8), S.random_lobes(rng, 0.1, twist=1.0))
        S.paint(tissue, grid, band, MUSCLE, where=tissue == FAT)
    r = u(18, 38)  # bladder filling
    bladder = Blob.of((p.cx + u(-5, 5), p.cy - p.b_ant * u(.3, .9), p.cz + p.c_up + r * u(.5, .9)),
                      (r * u(1, 1.4), r * u(.7, 1), r * u(.7, 1)), 0, S.random_lobes(rng, 0.05))
    S.paint(tissue, grid, bladder, BWALL)
    S.paint(tissue, grid, bladder.shrunk(3.0), URINE)  # a 3 mm wall
    for side in (-1, 1):  # seminal vesicles: convoluted, bright on T2 like the PZ
        sv = Blob.of((p.cx + side * u(10, 20), p.cy + p.b_post * u(.5, 1), p.cz + p.c_up * u(.7, 1.2)),
                     (u(10, 16), u(3, 6), u(6, 12)), side * u(.3, .8), S.random_lobes(rng, 0.25, (3, 5, 7), 2.0))
        S.paint(tissue, grid, sv, SVWALL)
        S.paint(tissue, grid, sv.scaled(0.75, 0.6, 1.0), SV)
    for _ in range(int(rng.integers(4, 9))):  # vessels: bright slow flow or dark flow voids
        angle, dist = u(0, 2 * np.pi), u(p.a + 8, p.a + 45)
        vessel = Blob.of((p.cx + dist * np.cos(angle), p.cy + 0.8 * dist * np.sin(angle), p.cz),
                         (u(1.5, 5), u(1.5, 5), 100), 0, S.random_lobes(rng, 0.2, twist=2.0))
        S.paint(tissue, grid, vessel, VESSEL if u() < 0.6 else VOID)
    for _ in range(int(rng.integers(3, 10))):  # venous plexus hugging the gland, anterior and lateral
        angle = u(-np.pi, 0)
        vein = Blob.of((p.cx + (p.a + u(1, 4)) * np.cos(angle), p.cy + (p.b_ant + u(1, 4)) * np.sin(angle),
                        p.cz + u(-p.c_down, p.c_up)), (u(1, 3), u(1, 2.5), u(3, 8)))
        S.paint(tissue, grid, vein, VESSEL)
    return rectum


def _indices(mask: np.ndarray, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
    """Full-grid indices of the voxels set in ``mask``, a mask of the voxels in ``box``."""
    return tuple(i + b.start for i, b in zip(np.nonzero(mask), box))


def _random_point(rng: np.random.Generator, grid: S.Grid, idx: tuple[np.ndarray, ...]) -> tuple | None:
    if not idx[0].size:
        return None
    k = int(rng.integers(idx[0].size))
    return tuple(float(grid.axis(d)[idx[d][k]]) for d in range(3))


def _gland(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, p: Gland) -> np.ndarray:
    """Paint the zones, capsule, nodules and lesions. Returns the label map (0, 1 PZ, 2 TZ)."""
    u = rng.uniform
    prostate = Blob.of((p.cx, p.cy, p.cz), ((p.a, p.a * u(.95, 1.05)), (p.b_ant, p.b_post), (p.c_down, p.c_up)),
                       u(-.15, .15), S.random_lobes(rng, 0.07, twist=0.6), ((1, u(-.05, .05), u(0, 6.3)),))
    box, q = prostate.field(grid)
    inside = q < 1
    g = u(0.45, 0.85)  # TZ share: hyperplasia makes it large and the PZ thin; the TZ tapers to the apex
    tz = Blob.of((p.cx + u(-2, 2), p.cy - p.b_ant * u(.12, .3), p.cz + p.c_up * u(.05, .25)),
                 ((p.a * g, p.a * g * u(.9, 1.1)), (p.b_ant * g * u(.8, 1), p.b_post * g * u(.75, .95)),
                  (p.c_down * g * 0.6, p.c_up * u(.8, 1))), u(-.1, .1), S.random_lobes(rng, 0.1, twist=0.6))
    tz_box, tz_q = tz.field(grid)
    tz_mask = S.full_mask(grid.shape, tz_box, tz_q < 1)[box] & inside
    # The anterior fibromuscular stroma: a curved band in front of the TZ, labelled TZ.
    band = Blob.of((p.cx, p.cy - p.b_ant, p.cz), (p.a * u(.6, .85), p.b_ant * u(.35, .55), (p.c_down * .7, p.c_up)),
                   0, S.random_lobes(rng, 0.1))
    band_box, band_q = band.field(grid)
    stroma = S.full_mask(grid.shape, band_box, band_q < 1)[box] & inside & ~tz_mask
    view = tissue[box]
    view[inside] = PZ
    view[tz_mask] = TZ
    view[stroma] = AFMS
    visible = S.smooth_noise(rng, inside.shape, 8.0, grid.spacing) > -0.3  # capsule: ~60% of the rim
    view[inside & (q >= 1 - 1.1 / p.a) & visible] = CAPSULE
    label = np.zeros(grid.shape, np.uint8)
    label[box][inside] = 1
    label[box][tz_mask | stroma] = 2
    zone = tissue == TZ
    zone_idx = _indices(zone[box] & inside, box)
    for _ in range(int(rng.integers(0, 1 + int(12 * g)))):  # hyperplastic nodules, bright or dark
        at = _random_point(rng, grid, zone_idx)
        if at is not None:
            nodule = Blob.of(at, (u(2, 6), u(2, 6), u(2, 6)), 0, S.random_lobes(rng, 0.1))
            S.paint(tissue, grid, nodule, NOD_B if u() < 0.5 else NOD_D, where=zone)
    gland = label > 0
    zones = {z: _indices(label[box] == z, box) for z in (1, 2)}
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):  # cancer: dark on T2 and ADC, mostly in the PZ
        at = _random_point(rng, grid, zones[1 if u() < 0.75 else 2])
        if at is not None:
            lesion = Blob.of(at, (u(3, 9), u(3, 8), u(3, 8)), 0, S.random_lobes(rng, 0.2))
            S.paint(tissue, grid, lesion, LESION, where=gland)
    return label


def _acquire(rng: np.random.Generator, grid: S.Grid, tissue: np.ndarray, rectum: Blob) -> np.ndarray:
    """T2 and ADC from the tissue map: contrast jitter, texture, PSF, bias, coil, Rician noise.

    Shape: ``(X, Y, Z, 2)`` int16."""
    u = rng.uniform
    table, grain = S.tissue_tables(rng, TISSUES, {
        PZ: (u(.62, .95), u(.52, .66), .14), TZ: (u(.36, .56), u(.42, .56), .16),
        LUMEN: RECTAL_CONTENT[int(rng.integers(3))]})
    factor = S.modulation(tissue, grain, S.smooth_noise(rng, grid.shape, 3.0, grid.spacing))
    coil = np.float32(1.0)
    if u() < 0.3:  # endorectal coil: strong signal fall-off from the rectum (T2 only)
        x, y, _ = grid.coords(tuple(slice(0, n) for n in grid.shape))  # type: ignore[arg-type]
        d2 = (x - rectum.centre[0]) ** 2 + (y - rectum.centre[1]) ** 2
        coil = 1 + np.float32(u(1, 3)) * np.exp(-d2 / np.float32(2 * u(20, 35) ** 2))
    channels = []
    # (PSF mm, bias strength, noise / gain, gain): ADC maps are blurrier and noisier than T2.
    for c, (psf, bias, noise, gain) in enumerate(((0.4, 0.15, u(.015, .04), u(250, 900)),
                                                  (1.6, 0.06, u(.03, .06), u(1800, 2600)))):
        image = S.render(tissue, table[:, c], factor, psf, grid.spacing, box_psf=c == 1)
        image *= S.bias_field(rng, grid, bias)
        if c == 0:
            image *= coil
        channels.append(S.to_int16(S.rician(rng, image * np.float32(gain), noise * gain)))
    return np.stack(channels, axis=-1)


def prostate_case(rng: np.random.Generator, size: int, slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic prostate MRI on a ``size x size x slices`` grid (field of view 150-190 mm,
    3-4 mm slices, more when few slices must cover the gland).

    Returns:
        ``(image int16 (X, Y, Z, 2) [T2, ADC], label uint8 (X, Y, Z) [0, 1 PZ, 2 TZ], affine (4, 4))``;
        the affine is oblique (a tilted acquisition plane).
    """
    u = rng.uniform
    fov = u(150, 190)
    grid = S.Grid((size, size, slices), (fov / size, fov / size, max(u(3.0, 4.0), 55.0 / slices)))
    b_ant = u(13, 19)
    gland = Gland(u(-6, 6), u(-4, 8), u(-6, 6), u(19, 28), b_ant, b_ant * u(.75, .95), u(13, 19), u(15, 22))
    tissue = np.zeros(grid.shape, np.uint8)
    _pelvis(rng, grid, tissue, gland)
    rectum = _neighbours(rng, grid, tissue, gland)
    label = _gland(rng, grid, tissue, gland)
    image = _acquire(rng, grid, tissue, rectum)
    rot = S.rotation(u(-.26, .26), u(-.1, .1), u(-.2, .2))
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot @ np.diag(grid.spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(grid.shape) - 1) / 2) + rng.uniform(-20, 20, 3)
    return image, label, affine
