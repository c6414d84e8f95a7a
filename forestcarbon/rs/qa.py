"""Cloud and quality masks: Sentinel-2 SCL classes and Landsat Collection 2 QA bits.

Sentinel-2 L2A Scene Classification (SCL): 0 no data, 1 saturated/defective,
2 dark area, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water,
7 unclassified, 8 cloud medium probability, 9 cloud high probability,
10 thin cirrus, 11 snow/ice.

Landsat Collection 2 Level-2 ``QA_PIXEL`` bits (USGS LSDS-1619/1328):
0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow,
6 clear, 7 water; bits 8-15 are confidence pairs.  ``QA_RADSAT``: bit
``b-1`` set means band ``b`` is saturated (bits 0-8 for bands 1-9 of OLI;
bit 11 terrain occlusion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

QA_PIXEL_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "cloud_shadow": 4, "snow": 5, "clear": 6, "water": 7}
DEFAULT_QA_MASK = ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow")
CLOUD_QA_FLAGS = ("dilated_cloud", "cirrus", "cloud", "cloud_shadow")
"""QA_PIXEL flags that ``mosaic.mask_dilation_px`` grows; fill, snow and water are not grown."""
CLOUD_SCL_CLASSES = (3, 8, 9, 10)
"""SCL classes that ``mosaic.mask_dilation_px`` grows: cloud shadow, cloud medium/high probability, thin cirrus."""
RADSAT_TERRAIN_OCCLUSION_BIT = 11


def qa_pixel_flags(qa: np.ndarray) -> dict[str, np.ndarray]:
    """Each named QA_PIXEL bit as a boolean array."""
    qa = np.asarray(qa).astype(np.uint16)
    return {name: (qa >> bit) & 1 == 1 for name, bit in QA_PIXEL_BITS.items()}


def qa_pixel_invalid(qa: np.ndarray, flags: tuple[str, ...] = DEFAULT_QA_MASK) -> np.ndarray:
    """True where any of ``flags`` is set in QA_PIXEL."""
    unknown = set(flags) - set(QA_PIXEL_BITS)
    if unknown:
        raise ValueError(f"unknown QA_PIXEL flags {sorted(unknown)}; known: {sorted(QA_PIXEL_BITS)}")
    bits = np.uint16(sum(1 << QA_PIXEL_BITS[f] for f in flags))
    return (np.asarray(qa).astype(np.uint16) & bits) != 0


def qa_pixel_cloud_and_other(qa: np.ndarray, flags: tuple[str, ...] = DEFAULT_QA_MASK) -> tuple[np.ndarray, np.ndarray]:
    """The masked ``flags`` split in two: cloud and shadow (:data:`CLOUD_QA_FLAGS`, to be dilated) and the rest."""
    cloud = tuple(f for f in flags if f in CLOUD_QA_FLAGS)
    other = tuple(f for f in flags if f not in CLOUD_QA_FLAGS)
    return qa_pixel_invalid(qa, cloud), qa_pixel_invalid(qa, other)


def scl_cloud_and_other(scl: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The masked SCL ``classes`` split in two: cloud and shadow (:data:`CLOUD_SCL_CLASSES`, to be dilated) and
    the rest (no data, 0, always among them)."""
    cloud = tuple(c for c in classes if c in CLOUD_SCL_CLASSES)
    other = tuple(c for c in classes if c not in CLOUD_SCL_CLASSES)
    return np.isin(np.asarray(scl), cloud), scl_invalid(scl, other)


def radsat_bits(bands: tuple[int, ...]) -> int:
    """The QA_RADSAT bits that invalidate an observation using product bands ``bands``: each band's
    saturation bit (band b -> bit b-1) and terrain occlusion."""
    return int(sum(1 << (b - 1) for b in bands) | (1 << RADSAT_TERRAIN_OCCLUSION_BIT))


def radsat_invalid(radsat: np.ndarray, bands: tuple[int, ...]) -> np.ndarray:
    """True where any of the 1-based ``bands`` is saturated, or terrain occludes the pixel."""
    bits = np.uint16(radsat_bits(bands))
    return (np.asarray(radsat).astype(np.uint16) & bits) != 0


def scl_invalid(scl: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """True where the SCL class is one of ``classes`` (0, no data, always counts)."""
    scl = np.asarray(scl)
    return np.isin(scl, tuple(classes)) | (scl == 0)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a 2-D (or (..., y, x)) mask by ``pixels`` with a square structuring element."""
    if pixels <= 0:
        return mask
    st = np.zeros((3,) * mask.ndim, dtype=bool)
    core = np.ones((3, 3), dtype=bool)
    st[(1,) * (mask.ndim - 2) + (slice(None), slice(None))] = core
    return ndimage.binary_dilation(mask, structure=st, iterations=pixels)
