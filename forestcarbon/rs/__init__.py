"""Rasters: target grid, COG I/O, Sentinel-2 scenes, composites, LiDAR gridding."""
