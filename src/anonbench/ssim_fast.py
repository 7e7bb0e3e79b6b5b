"""Exact SSIM of a whole image and of any number of boxes, after one pass over the image.

Semantics are those of ``skimage.metrics.structural_similarity`` with its
defaults on 8-bit images: a ``win_size`` x ``win_size`` uniform window, data
range 255, K1 = 0.01, K2 = 0.03, sample covariance (``use_sample_covariance``),
colour channels averaged, and the mean taken over the windows that lie wholly
inside the image (skimage filters with ``mode='reflect'`` and then crops
``(win_size - 1) // 2`` pixels off each side of the map, which leaves exactly
those windows).

Why one map serves every box: a window that lies inside a crop sees the same
pixels in the crop as in the full image, so the SSIM of a crop is the mean of
the full image's per-window map over the windows inside the crop. Summed-area
tables of the map give that mean in O(1) per box.

Why it is fast and exact: window sums of 8-bit pixels, their squares and
products are integers, computed exactly, and the statistics stay integers up
to the last divisions (float64). A window that sees no changed pixel has SSIM,
luminance, contrast and structure exactly 1 (skimage's float64 arithmetic
gives exactly 1 there too), so an anonymized image is evaluated only around
its anonymized region: in bands of window rows, from the first to the last
window of the band that touches a change, small enough for the temporaries
to stay in the CPU cache. The summed-area tables hold ``1 - map``, zero where
nothing changed, so they only cover the changed area.

Besides SSIM the three factors of Wang et al. (2004), Eq. 1a-1c, with the same
window statistics: luminance ``l = (2 mx my + C1) / (mx^2 + my^2 + C1)``,
contrast ``c = (2 sx sy + C2) / (sx^2 + sy^2 + C2)``, structure
``s = (sxy + C3) / (sx sy + C3)`` with ``C3 = C2 / 2``, so ``l * c * s`` equals
SSIM window by window. A region's l, c and s are the means of their maps over
the region, like its SSIM (the product of the three means is not the mean SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
COMPONENTS = ("ssim", "luminance", "contrast", "structure")
# float32 holds window sums exactly while they stay below 2**24 (win_size <= 15 for squares of 8-bit values).
_FLOAT32_EXACT = 2**24
# Rows of windows evaluated together: few enough for the float64 temporaries to stay in the CPU cache.
_BAND_ROWS = 16


class SsimInputError(ValueError):
    """The two images cannot be compared (dtype, dimensions or sizes differ)."""


@dataclass(frozen=True)
class Scores:
    """Mean SSIM and its factors over one region; NaN with a reason when it has no whole window."""

    ssim: float
    luminance: float
    contrast: float
    structure: float
    reason: str = ""

    @classmethod
    def undefined(cls, reason: str) -> Scores:
        """Scores of a region SSIM is not defined on (all NaN, with the reason)."""
        return cls(math.nan, math.nan, math.nan, math.nan, reason)

    def as_dict(self) -> dict[str, float | str]:
        """Column name to value, as the stage's tables store them."""
        return asdict(self)


def crop_bounds(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds of a COCO ``[x, y, w, h]`` box: the smallest pixel block covering it.

    Args:
        bbox: COCO box in float pixels.
        width: Image width.
        height: Image height.

    Returns:
        ``(x0, y0, x1, y1)`` half-open, ``floor(x), floor(y), ceil(x + w), ceil(y + h)`` clipped to the image.
    """
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(math.floor(x), 0), width)
    y0 = min(max(math.floor(y), 0), height)
    x1 = min(max(math.ceil(x + w), x0), width)
    y1 = min(max(math.ceil(y + h), y0), height)
    return x0, y0, x1, y1


def _as_image(image: np.ndarray, name: str) -> np.ndarray:
    """Check an 8-bit image and give it a channel axis (grayscale becomes H x W x 1)."""
    if image.dtype != np.uint8:
        raise SsimInputError(f"{name}: expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or image.size == 0:
        raise SsimInputError(f"{name}: expected a non-empty H x W or H x W x C image (C <= 4), got {image.shape}")
    return image


def _box_sums(image: np.ndarray, win_size: int) -> np.ndarray:
    """Exact sums over every window, indexed by the window's top-left pixel: H x W x C (float32 or float64)."""
    depth = cv2.CV_32F if win_size * win_size * 255 * 255 < _FLOAT32_EXACT else cv2.CV_64F
    sums = cv2.boxFilter(
        image, depth, (win_size, win_size), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_CONSTANT
    )
    return sums.reshape(image.shape)


def _factors(sums: list[np.ndarray], win_size: int) -> np.ndarray:
    """SSIM, luminance, contrast and structure from exact window sums.

    Args:
        sums: Float64 sums of x, y, x*x, y*y, x*y per window and channel, all of one shape; overwritten.
        win_size: Window side.

    Returns:
        ``(4, *shape)``: ssim, l, c, s. Every statistic is scaled to stay an integer until the
        last division (variances times N(N-1), means times N), in place to spare memory traffic.
    """
    n_px = win_size * win_size
    c1 = (K1 * DATA_RANGE) ** 2 * n_px * n_px
    c2 = (K2 * DATA_RANGE) ** 2 * n_px * (n_px - 1)
    c3 = c2 / 2
    sx, sy, sxx, syy, sxy = sums
    out = np.empty((4, *sx.shape))
    ssim, lum, con, struct = out
    np.multiply(sx, sy, out=con)  # scratch: sx * sy
    np.multiply(sx, sx, out=struct)  # scratch: sx^2, then the luminance denominator
    sxx *= n_px
    sxx -= struct  # N(N-1) var_x
    np.multiply(sy, sy, out=ssim)
    syy *= n_px
    syy -= ssim  # N(N-1) var_y
    sxy *= n_px
    sxy -= con  # N(N-1) cov_xy
    struct += ssim
    struct += c1
    np.multiply(con, 2.0, out=lum)
    lum += c1
    lum /= struct  # l
    np.add(sxx, syy, out=struct)
    struct += c2  # contrast-structure denominator
    np.multiply(sxy, 2.0, out=ssim)
    ssim += c2
    ssim /= struct
    ssim *= lum  # ssim = l * (2 cov + C2) / (var_x + var_y + C2), skimage's formula
    np.multiply(sxx, syy, out=sx)
    np.sqrt(sx, out=sx)  # N(N-1) sigma_x sigma_y (variances are exact, never negative)
    np.multiply(sx, 2.0, out=con)
    con += c2
    con /= struct  # c
    np.add(sxy, c3, out=struct)
    sx += c3
    struct /= sx  # s
    return out


def _factor_bands(
    original: np.ndarray, variant: np.ndarray, touched: np.ndarray, win_size: int
) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """SSIM, l, c, s per channel, band by band, of the windows a band needs.

    Args:
        original: H x W x C uint8.
        variant: Same shape.
        touched: ``(H - win + 1) x (W - win + 1)``, nonzero for the windows to evaluate.
        win_size: Window side.

    Yields:
        The band's place in the window map and its ``(4, rows, cols, C)`` factors, covering the
        band's columns from its first to its last window to evaluate.
    """
    x16, y16 = original.astype(np.uint16), variant.astype(np.uint16)
    sums = [_box_sums(plane, win_size) for plane in (original, variant, x16 * x16, y16 * y16, x16 * y16)]
    for top in range(0, touched.shape[0], _BAND_ROWS):
        rows = slice(top, min(top + _BAND_ROWS, touched.shape[0]))
        columns = np.flatnonzero(touched[rows].max(axis=0))
        if columns.size:
            place = (rows, slice(int(columns[0]), int(columns[-1]) + 1))
            yield place, _factors([s[place].astype(np.float64) for s in sums], win_size)


def _deviation(original: np.ndarray, variant: np.ndarray, diff: np.ndarray, win_size: int) -> np.ndarray:
    """``1 - map`` of SSIM, l, c, s over every whole window, channels averaged, zero where a window sees no change.

    Args:
        original: H x W x C uint8.
        variant: Same shape.
        diff: H x W uint8, nonzero where any channel differs.
        win_size: Window side.

    Returns:
        ``(H - win + 1, W - win + 1, 4)`` float64.
    """
    height, width, channels = original.shape
    map_h, map_w = height - win_size + 1, width - win_size + 1
    touched = cv2.boxFilter(
        diff, cv2.CV_32F, (win_size, win_size), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_CONSTANT
    )[:map_h, :map_w]
    deviation = np.zeros((map_h, map_w, 4))
    weights = np.full(channels, 1.0 / channels)
    for place, factors in _factor_bands(original, variant, touched, win_size):
        np.subtract(1.0, np.moveaxis(factors @ weights, 0, -1), out=deviation[place])
    return deviation


def _changed(original: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """H x W uint8, nonzero where any channel differs (saturating channel sum of |x - y|)."""
    diff = cv2.absdiff(original, variant).reshape(original.shape)
    if original.shape[2] == 1:
        return diff[:, :, 0]
    return cv2.transform(diff, np.ones((1, original.shape[2])))


def _checked_pair(original: np.ndarray, variant: np.ndarray, win_size: int) -> tuple[np.ndarray, np.ndarray]:
    if win_size < 3 or win_size % 2 == 0:
        raise SsimInputError(f"win_size must be odd and at least 3, got {win_size}")
    if original.shape != variant.shape:
        raise SsimInputError(f"image sizes differ: original {original.shape}, variant {variant.shape}")
    return _as_image(original, "original"), _as_image(variant, "variant")


def component_maps(original: np.ndarray, variant: np.ndarray, win_size: int = 7) -> np.ndarray:
    """Per-window, per-channel SSIM, l, c, s maps of the whole image, every window evaluated.

    For inspection, and where ``l * c * s == ssim`` holds: per window and channel (means over
    channels or regions do not factor).

    Args:
        original: H x W or H x W x C uint8.
        variant: Same shape and dtype.
        win_size: Odd window side.

    Returns:
        ``(4, H - win + 1, W - win + 1, C)``: entry ``[k, i, j, ch]`` belongs to the window whose
        top-left pixel is ``(i, j)``; ``k`` follows :data:`COMPONENTS`.
    """
    original, variant = _checked_pair(original, variant, win_size)
    height, width, channels = original.shape
    if min(height, width) < win_size:
        raise SsimInputError(f"image {height}x{width} is smaller than the {win_size}x{win_size} window")
    maps = np.empty((4, height - win_size + 1, width - win_size + 1, channels))
    for place, factors in _factor_bands(original, variant, np.ones(maps.shape[1:3], np.uint8), win_size):
        maps[(slice(None), *place)] = factors
    return maps


class SsimIndex:
    """SSIM, luminance, contrast and structure of any axis-aligned region in O(1).

    Built once per image pair; :meth:`region` then answers what
    ``structural_similarity(original[y0:y1, x0:x1], variant[y0:y1, x0:x1],
    win_size=win_size, data_range=255, channel_axis=2)`` would (to float64
    rounding), without computing anything again.
    """

    def __init__(self, original: np.ndarray, variant: np.ndarray, win_size: int = 7) -> None:
        """Compute the summed-area tables of the changed area.

        Args:
            original: H x W (grayscale) or H x W x C uint8.
            variant: Same shape and dtype.
            win_size: Odd window side (skimage's default is 7).

        Raises:
            SsimInputError: If shapes or dtypes do not allow a comparison.
        """
        original, variant = _checked_pair(original, variant, win_size)
        self.win_size = win_size
        self.height, self.width = original.shape[:2]
        diff = _changed(original, variant)
        self.changed_fraction = np.count_nonzero(diff) / diff.size
        self._table: np.ndarray | None = None
        self._origin = (0, 0)
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(diff.any(axis=0))
        # Every window that touches a changed pixel lies inside this block.
        top, left = max(int(rows[0]) - win_size + 1, 0), max(int(cols[0]) - win_size + 1, 0)
        bottom, right = min(int(rows[-1]) + win_size, self.height), min(int(cols[-1]) + win_size, self.width)
        if bottom - top < win_size or right - left < win_size:
            return
        block = np.s_[top:bottom, left:right]
        deviation = _deviation(original[block], variant[block], diff[block], win_size)
        self._table = cv2.integral(deviation, sdepth=cv2.CV_64F)
        self._origin = (top, left)

    def whole(self) -> Scores:
        """Scores of the whole image (skimage's ``structural_similarity`` of the pair)."""
        return self.region((0, 0, self.width, self.height))

    def region(self, bounds: tuple[int, int, int, int]) -> Scores:
        """Scores of the crop ``[y0:y1, x0:x1]`` of both images.

        Args:
            bounds: ``(x0, y0, x1, y1)`` half-open pixel bounds inside the image (see :func:`crop_bounds`).

        Returns:
            The means over the crop's whole windows; NaN with a reason if the crop is
            narrower or lower than the window.
        """
        x0, y0, x1, y1 = bounds
        if not (0 <= x0 <= x1 <= self.width and 0 <= y0 <= y1 <= self.height):
            raise ValueError(f"bounds {bounds} outside the {self.width}x{self.height} image")
        win = self.win_size
        if x1 - x0 < win or y1 - y0 < win:
            return Scores.undefined(f"crop {x1 - x0}x{y1 - y0} px is smaller than the {win}x{win} window")
        # Windows inside the crop have their top-left pixel in [y0, y1 - win] x [x0, x1 - win].
        count = (y1 - y0 - win + 1) * (x1 - x0 - win + 1)
        if self._table is None:
            return Scores(1.0, 1.0, 1.0, 1.0)
        top, left = self._origin
        rows, cols = self._table.shape[0] - 1, self._table.shape[1] - 1
        r0, r1 = (min(max(v - top, 0), rows) for v in (y0, y1 - win + 1))
        c0, c1 = (min(max(v - left, 0), cols) for v in (x0, x1 - win + 1))
        table = self._table
        lost = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        ssim, lum, con, struct = (1.0 - lost / count).tolist()
        return Scores(ssim, lum, con, struct)
