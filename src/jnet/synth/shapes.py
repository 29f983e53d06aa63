"""Geometry and MR-physics helpers for the synthetic datasets (``jnet.synth.generate``).

Anatomy is drawn in millimetres on a voxel grid, so it keeps its size when the grid changes. Shapes
are ellipsoids with different half-axes on each side and a boundary perturbed by low-order angular
harmonics (curved, lobulated, never a perfect circle). Images come from a tissue map through a
per-tissue lookup table, a smooth texture, a point-spread blur, a smooth bias field and Rician
noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (mm) of a volume, centred on the volume centre."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axis(self, d: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        n = self.shape[d]
        idx = np.arange(lo, n if hi is None else hi, dtype=np.float32)
        return (idx - (n - 1) / 2) * np.float32(self.spacing[d])

    def box(self, centre, radius) -> tuple[slice, slice, slice]:
        """Index ranges covering ``centre +- radius`` (mm, per axis), clipped to the grid."""
        out = []
        for d in range(3):
            n, s = self.shape[d], self.spacing[d]
            lo = int(np.floor((centre[d] - radius[d]) / s + (n - 1) / 2))
            hi = int(np.ceil((centre[d] + radius[d]) / s + (n - 1) / 2)) + 1
            out.append(slice(min(max(lo, 0), n), min(max(hi, 0), n)))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(x (X,1,1), y (1,Y,1), z (1,1,Z))`` for the voxels in ``box``."""
        x, y, z = (self.axis(d, box[d].start, box[d].stop) for d in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


@dataclass(frozen=True)
class Blob:
    """A lobulated ellipsoid.

    ``axes`` are the half-axes (mm) on the negative and positive side of each (rotated) axis; the
    boundary radius is scaled by ``1 + sum(amp * cos(k * theta + phase + twist * w))`` over the
    in-plane angle theta (``twist`` turns the lobes along the slice axis) and by
    ``1 + sum(amp * cos(pi * m * w + phase))`` along it, w in [-1, 1].
    """

    centre: tuple[float, float, float]
    axes: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    angle: float = 0.0
    lobes: tuple[tuple[int, float, float, float], ...] = ()  # (k, amp, phase, twist)
    layers: tuple[tuple[int, float, float], ...] = ()  # (m, amp, phase)

    @classmethod
    def of(cls, centre, axes, angle: float = 0.0, lobes: tuple = (), layers: tuple = ()) -> "Blob":
        """A blob from half-axes given as a number (same on both sides) or a (negative, positive) pair."""
        pairs = tuple((float(a), float(a)) if np.isscalar(a) else (float(a[0]), float(a[1])) for a in axes)
        return cls(tuple(float(c) for c in centre), pairs, float(angle), tuple(lobes), tuple(layers))  # type: ignore[arg-type]

    def scaled(self, fx: float, fy: float | None = None, fz: float | None = None) -> "Blob":
        """The same blob with its half-axes scaled (an inner layer: lumen inside a wall)."""
        f = (fx, fx if fy is None else fy, fx if fz is None else fz)
        axes = tuple((n * k, p * k) for (n, p), k in zip(self.axes, f))
        return Blob(self.centre, axes, self.angle, self.lobes, self.layers)  # type: ignore[arg-type]

    def shrunk(self, mm: float) -> "Blob":
        """The same blob with every half-axis ``mm`` shorter (the inside of a wall ``mm`` thick)."""
        axes = tuple((n - mm, p - mm) for n, p in self.axes)
        return Blob(self.centre, axes, self.angle, self.lobes, self.layers)  # type: ignore[arg-type]

    def extent(self) -> tuple[float, float, float]:
        grow = 1.0 + sum(abs(a) for _, a, _, _ in self.lobes) + sum(abs(a) for _, a, _ in self.layers)
        r = max(max(self.axes[0]), max(self.axes[1]))
        return (r * grow, r * grow, max(self.axes[2]) * grow)

    def field(self, grid: Grid) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """``(box, q)``: q < 1 inside the blob, q = 1 on its boundary, for the voxels in box."""
        box = grid.box(self.centre, self.extent())
        x, y, z = grid.coords(box)
        dx, dy, w = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        u, v = c * dx + s * dy, c * dy - s * dx
        (an, ap), (bn, bp), (cn, cp) = self.axes
        u = u / np.where(u < 0, np.float32(an), np.float32(ap))
        v = v / np.where(v < 0, np.float32(bn), np.float32(bp))
        w = w / np.where(w < 0, np.float32(cn), np.float32(cp))
        # Lobes without twist and the layers are 2D and 1D: sum them before broadcasting to 3D.
        planar = np.ones(u.shape, np.float32)
        along = np.zeros(w.shape, np.float32)
        wc = np.clip(w, -1, 1)
        theta = np.arctan2(v, u) if self.lobes else None
        for m, amp, phase in self.layers:
            along += np.float32(amp) * np.cos(np.float32(np.pi * m) * wc + np.float32(phase))
        for k, amp, phase, twist in self.lobes:
            if twist == 0:
                planar += np.float32(amp) * np.cos(k * theta + np.float32(phase))
        radius = planar + along
        for k, amp, phase, twist in self.lobes:
            if twist != 0:
                radius += np.float32(amp) * np.cos(k * theta + np.float32(phase) + np.float32(twist) * wc)
        q = np.sqrt(u * u + v * v + w * w)
        q /= np.maximum(radius, np.float32(0.2), out=radius)
        return box, q.astype(np.float32, copy=False)


def random_lobes(rng: np.random.Generator, amp: float, ks=(2, 3, 4), twist: float = 0.0) -> tuple:
    """Random harmonics of decreasing amplitude for :class:`Blob` (curved, lobulated outlines)."""
    return tuple(
        (k, float(rng.uniform(0.3, 1.0) * amp / (i + 1)), float(rng.uniform(0, 2 * np.pi)),
         float(rng.uniform(-twist, twist)))
        for i, k in enumerate(ks)
    )


def paint(tissue: np.ndarray, grid: Grid, blob: Blob, code: int, where: np.ndarray | None = None,
          shell: float | None = None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Set ``tissue`` to ``code`` inside ``blob`` (or in its outer ``shell``, a fraction of the
    radius), optionally only where the full-size bool mask ``where`` holds.

    Returns:
        ``(box, inside)``: the painted voxels are ``tissue[box][inside]``.
    """
    box, q = blob.field(grid)
    inside = q < 1 if shell is None else (q < 1) & (q >= 1 - shell)
    if where is not None:
        inside &= where[box]
    tissue[box][inside] = code
    return box, inside


def full_mask(shape: tuple[int, ...], box: tuple[slice, slice, slice], inside: np.ndarray) -> np.ndarray:
    """A ``(box, inside)`` pair from :func:`paint` as a full-size bool mask."""
    out = np.zeros(shape, bool)
    out[box] = inside
    return out


def _lerp_axis(field: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Resample ``field`` linearly to ``n`` samples along ``axis``, end points kept."""
    coarse = field.shape[axis]
    pos = np.linspace(0, coarse - 1, n, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), coarse - 2)
    shape = [1] * field.ndim
    shape[axis] = n
    frac = (pos - lo).reshape(shape)
    low = np.take(field, lo, axis=axis)
    high = np.take(field, lo + 1, axis=axis)
    high -= low
    high *= frac
    high += low
    return high


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell: float, spacing) -> np.ndarray:
    """Zero-mean random field of about unit variance with correlation length ``cell`` mm.

    White noise on a coarse lattice (one knot per ``cell`` mm), interpolated linearly along each
    axis (much faster than a 3D zoom). Shape: ``shape``, float32."""
    coarse = [min(n, max(2, int(np.ceil(n * s / cell)) + 1)) for n, s in zip(shape, spacing)]
    field = rng.standard_normal(coarse, dtype=np.float32)
    for axis in (2, 0, 1):  # the largest intermediate last
        if coarse[axis] != shape[axis]:
            field = _lerp_axis(field, shape[axis], axis)
    return np.ascontiguousarray(field, dtype=np.float32)


def bias_field(rng: np.random.Generator, grid: Grid, strength: float,
               box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Smooth multiplicative field ``exp(quadratic polynomial)``, about ``1 +- strength``.

    Shape: the voxels of ``box`` (default: the whole grid)."""
    box = box or tuple(slice(0, n) for n in grid.shape)  # type: ignore[assignment]
    x, y, z = grid.coords(box)  # type: ignore[arg-type]
    ext = [max(1e-3, float(np.abs(grid.axis(d)).max())) for d in range(3)]
    xn, yn, zn = x / ext[0], y / ext[1], z / ext[2]
    c = rng.normal(0, strength, 7).astype(np.float32)
    in_plane = np.exp(c[0] * xn + c[1] * yn + c[3] * xn * xn + c[4] * yn * yn + c[5] * xn * yn)
    return (in_plane * np.exp(c[2] * zn + c[6] * zn * zn)).astype(np.float32)


def tissue_tables(rng: np.random.Generator, base: dict, overrides: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-case lookup tables from ``{code: (intensity per channel..., grain)}``: contrast jittered by
    +-12% per tissue and channel. Returns ``(table (codes, channels), grain (codes,))`` float32."""
    rows = np.array([overrides.get(t, base[t]) for t in sorted(base)], dtype=np.float32)
    table = rows[:, :-1] * rng.uniform(0.88, 1.12, rows[:, :-1].shape).astype(np.float32)
    return table, rows[:, -1].copy()


def modulation(tissue: np.ndarray, grain: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Per-voxel texture factor ``1 + grain[code] * texture`` (shared by all channels of a case)."""
    out = grain.astype(np.float32)[tissue]
    out *= texture
    out += np.float32(1)
    return out


def render(tissue: np.ndarray, table: np.ndarray, factor: np.ndarray, psf_mm: float, spacing,
           box_psf: bool = False) -> np.ndarray:
    """Tissue codes -> intensities ``table[code] * factor``, blurred in-plane by the acquisition's
    point-spread function (partial volume at boundaries): a Gaussian of ``psf_mm`` standard
    deviation, or with ``box_psf`` a box of the same variance (a coarser acquisition grid; cheaper
    for wide kernels). Shape: ``tissue.shape``."""
    image = table.astype(np.float32)[tissue]
    image *= factor
    for d in (0, 1):
        width = psf_mm / spacing[d]
        if box_psf and width * 12 ** 0.5 >= 2:
            image = ndimage.uniform_filter1d(image, int(round(width * 12 ** 0.5)), axis=d, mode="nearest")
        elif width >= 0.3:  # narrower kernels change nothing visible
            image = ndimage.gaussian_filter1d(image, width, axis=d, mode="nearest", truncate=3.0)
    return image


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both parts (MR magnitude noise).

    Shape: kept; float32."""
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32)
    noise *= np.float32(sigma)
    noise[0] += image
    np.square(noise, out=noise)
    out = noise[0]
    out += noise[1]
    return np.sqrt(out, out=out)


def to_int16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx
