"""Vectors: plots, parcels, projects, zonal statistics and overlays."""
