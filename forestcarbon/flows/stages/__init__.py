"""The pipeline's stages as plain functions: read inputs, compute, write outputs.

Each stage takes a :class:`Context` (configuration, the one target GeoBox,
the output layout), reads its inputs or earlier stages' outputs, calls the
computation in ``rs``, ``vector`` and ``models`` and writes atomically.  No
Prefect here: the flows in :mod:`forestcarbon.flows.pipeline` only wire
these together.  One module per stage; :mod:`.context` holds the shared
context and the preflight checks.
"""

from .context import LIDAR_FEATURES, STAGE_NEEDS, Context, open_stack, preflight, preflight_mosaic
from .lidar import chm_geobox, premade_lidar_metrics, stage_lidar
from .map import CARBON_BANDS, parcel_groups, stage_map
from .model import MAP_KINDS, stage_model
from .mosaic import scene_table, stage_mosaic, write_composite
from .parcels import parcel_carbon, stage_parcels
from .plots import check_inventory, inventory_biomass, stage_plots
from .projects import stage_projects
from .report import stage_report
from .terrain import stage_terrain
from .trees import stage_trees

STAGES = {
    "mosaic": stage_mosaic, "lidar": stage_lidar, "terrain": stage_terrain, "plots": stage_plots, "model": stage_model,
    "map": stage_map, "parcels": stage_parcels, "projects": stage_projects, "trees": stage_trees,
    "report": stage_report,
}

__all__ = ["CARBON_BANDS", "LIDAR_FEATURES", "MAP_KINDS", "STAGES", "STAGE_NEEDS", "Context", "check_inventory",
           "chm_geobox", "inventory_biomass", "open_stack", "parcel_carbon", "parcel_groups", "preflight",
           "preflight_mosaic", "premade_lidar_metrics", "scene_table", "stage_lidar", "stage_map", "stage_model",
           "stage_mosaic", "stage_parcels", "stage_plots", "stage_projects", "stage_report", "stage_terrain", "stage_trees",
           "write_composite"]
