"""Synthetic county generator for forestcarbon.

Writes a seeded, deterministic scene in exactly the formats real inputs arrive
in -- Sentinel-2 L2A COGs with STAC items, LAS 1.4 LAZ tiles, a plots
GeoPackage and trees CSV, parcels and projects GeoPackages -- plus the truth
(AGB raster, carbon per parcel), kept apart in ``truth/``.  The pipeline
(``forestcarbon``) never imports this package.
"""

from .scene import make_scene

__all__ = ["make_scene"]
