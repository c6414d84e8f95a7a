"""Every error forestcarbon raises on purpose.

One base class, :class:`ForestCarbonError`; each error also subclasses the
builtin it resembles (as rasterio's ``errors.py`` does), so callers may catch
either.  Messages are one line and name the file, layer, field or value.
"""

from __future__ import annotations


class ForestCarbonError(Exception):
    """Base class of all forestcarbon errors."""


class ConfigError(ForestCarbonError, ValueError):
    """A configuration key is missing or has a bad value."""


class InputNotFoundError(ForestCarbonError, FileNotFoundError):
    """An input file or folder named in the configuration does not exist."""

    def __str__(self) -> str:  # FileNotFoundError's default str is fine, keep one line
        return " ".join(str(a) for a in self.args)


class CRSError(ForestCarbonError, ValueError):
    """A coordinate reference system does not parse or does not match."""


class FieldError(ForestCarbonError, ValueError):
    """A vector layer or table lacks a field, or a field holds bad values."""


class SceneError(ForestCarbonError, ValueError):
    """A satellite scene (STAC item, band asset, metadata) is unusable."""


class LidarError(ForestCarbonError, ValueError):
    """A LAS/LAZ file or folder is unusable."""


class AllometryError(ForestCarbonError, ValueError):
    """No equation applies to a tree, or an equation is malformed."""


class ModelError(ForestCarbonError, ValueError):
    """A biomass regressor cannot be fitted or applied."""


class StageInputError(ForestCarbonError, FileNotFoundError):
    """A stage needs an earlier stage's output that is not in the output folder."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)


class ForestCarbonWarning(UserWarning):
    """Base class of the warnings forestcarbon issues for decisions a user may want to turn into errors
    (``warnings.simplefilter("error", ForestCarbonWarning)`` or ``python -W error::...``)."""


class UnresolvedSpeciesWarning(ForestCarbonWarning):
    """Parcels name a species that resolves to no species group; their pixels take the default carbon conversion."""


class BandpassWarning(ForestCarbonWarning):
    """Landsat scenes are composited with Sentinel-2 without a bandpass adjustment (no verified coefficients
    for their sensor, e.g. TM or ETM+)."""


class SpatialCVWarning(ForestCarbonWarning):
    """Spatial cross-validation blocks are smaller than the practical range of the out-of-fold residuals'
    variogram, so held-out plots still have correlated neighbours in the training folds and the CV figures
    are optimistic (Roberts et al. 2017, Ecography 40:913-929)."""


class LedgerError(ForestCarbonError, LookupError):
    """The parcel carbon accounts lack an epoch or a parcel asked for, or the accounts database is unusable."""


class DiskFullError(ForestCarbonError, OSError):
    """An output could not be written: its file system is full."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)
