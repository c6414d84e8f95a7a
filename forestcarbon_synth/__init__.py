"""Synthetic county generator for forestcarbon.

Writes a seeded, deterministic scene in exactly the formats real inputs arrive
in -- Sentinel-2 L2A COGs with STAC items, LAS 1.4 LAZ tiles, a plots
GeoPackage and trees CSV, parcels and projects GeoPackages, dense UAV LiDAR
tiles over a few windows (:mod:`.uav_lidar`) and village polygons
(:mod:`.villages`) -- plus the truth (AGB raster, carbon per parcel, every
tree in the UAV windows with its carbon, :mod:`.trees`), kept apart in
``truth/``.  The pipeline (``forestcarbon``) never imports this package; this
package takes from the pipeline only its carbon conversion (a definition, not
an estimate: the allometry table's carbon fractions and root-to-shoot ratios).
"""

from .scene import make_scene

__all__ = ["make_scene"]
