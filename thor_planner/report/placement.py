"""Where a figure's label goes so that no line crosses it: pure geometry, no plotly.

Coordinates are fractions of the plot area (0 at the left/bottom, 1 at the right/top). A label is a
box of known size in those units; the figure's lines are given as polylines and sampled densely, and
other labels or markers as boxes. :func:`free_boxes` takes candidate centres in order of preference
and yields the boxes that no line point and no blocked box touches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in plot-area fractions."""

    left: float
    bottom: float
    right: float
    top: float

    @classmethod
    def around(cls, cx: float, cy: float, width: float, height: float) -> "Box":
        return cls(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.bottom + self.top) / 2

    def grown(self, dx: float, dy: float) -> "Box":
        return Box(self.left - dx, self.bottom - dy, self.right + dx, self.top + dy)

    def overlaps(self, other: "Box") -> bool:
        return not (self.right <= other.left or other.right <= self.left
                    or self.top <= other.bottom or other.top <= self.bottom)


def sample_polyline(xs, ys, step: float) -> np.ndarray:
    """Points along the polyline through ``(xs, ys)``, no two consecutive ones farther apart than
    ``step`` (so a box wider and taller than ``step`` that the line crosses holds one of them)."""
    pts = np.column_stack([np.asarray(xs, float), np.asarray(ys, float)])
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.hypot(*(b - a)) / step)))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(a + t * (b - a))
    return np.concatenate(out)


def _free_mask(boxes: np.ndarray, points: np.ndarray, blocked: list[Box]) -> np.ndarray:
    """For boxes as rows ``(left, bottom, right, top)``: inside the plot area, no point inside, no
    blocked box overlapping."""
    ok = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= 1) & (boxes[:, 3] <= 1)
    if len(points):
        px, py = points[None, :, 0], points[None, :, 1]
        inside = ((px >= boxes[:, 0:1]) & (px <= boxes[:, 2:3]) & (py >= boxes[:, 1:2]) & (py <= boxes[:, 3:4]))
        ok &= ~inside.any(axis=1)
    for b in blocked:
        ok &= (boxes[:, 2] <= b.left) | (b.right <= boxes[:, 0]) | (boxes[:, 3] <= b.bottom) | (b.top <= boxes[:, 1])
    return ok


def free_boxes(centres: np.ndarray, size: tuple[float, float], points: np.ndarray, blocked: list[Box] = (),
               pad: tuple[float, float] = (0.0, 0.0), chunk: int = 256) -> Iterator[Box]:
    """The boxes of ``size`` centred on ``centres`` (an ``(n, 2)`` array, in order of preference) that,
    grown by ``pad`` on every side, stay inside the plot area and clear of ``points`` and ``blocked``,
    in that order (without their padding)."""
    width, height = size
    full = np.column_stack([centres[:, 0] - width / 2 - pad[0], centres[:, 1] - height / 2 - pad[1],
                            centres[:, 0] + width / 2 + pad[0], centres[:, 1] + height / 2 + pad[1]])
    for start in range(0, len(full), chunk):
        for i in np.flatnonzero(_free_mask(full[start:start + chunk], points, list(blocked))):
            cx, cy = centres[start + i]
            yield Box.around(float(cx), float(cy), width, height)


def nearest_first(anchor: tuple[float, float], size: tuple[float, float], scale: tuple[float, float],
                  step: float) -> np.ndarray:
    """Centres on a grid over the plot area for boxes of ``size``, ordered by the distance in pixels
    (``scale``: the plot area's width and height in pixels) from ``anchor`` to the box, then from
    ``anchor`` to the centre: labels beside the point first, above or below it before aside."""
    grid = np.arange(0.0, 1.0 + step / 2, step)
    cx, cy = (a.ravel() for a in np.meshgrid(grid, grid))
    du, dv = np.abs(cx - anchor[0]) * scale[0], np.abs(cy - anchor[1]) * scale[1]
    to_box = np.hypot(np.maximum(du - size[0] * scale[0] / 2, 0), np.maximum(dv - size[1] * scale[1] / 2, 0))
    order = np.lexsort((np.hypot(du, dv), np.round(to_box)))
    return np.column_stack([cx[order], cy[order]])


def segment_clear(start: tuple[float, float], end: tuple[float, float], points: np.ndarray,
                  scale: tuple[float, float], clearance_px: float) -> bool:
    """Whether no point lies within ``clearance_px`` pixels of the segment from ``start`` to ``end``."""
    if not len(points):
        return True
    a, b = np.asarray(start, float) * scale, np.asarray(end, float) * scale
    p = points * np.asarray(scale, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0, 1)
    return bool(np.hypot(*(p - (a + t[:, None] * ab)).T).min() > clearance_px)
