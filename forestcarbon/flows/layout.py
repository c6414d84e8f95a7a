"""Where each stage writes in the output folder (the output contract)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    # 1 mosaic
    @property
    def reflectance(self) -> Path: return self.root / "mosaic" / "reflectance.tif"
    @property
    def indices(self) -> Path: return self.root / "mosaic" / "indices.tif"
    @property
    def valid_count(self) -> Path: return self.root / "mosaic" / "valid_count.tif"
    @property
    def source_date(self) -> Path: return self.root / "mosaic" / "source_date.tif"
    @property
    def scenes(self) -> Path: return self.root / "mosaic" / "scenes.csv"
    # 2 lidar
    @property
    def lidar_metrics(self) -> Path: return self.root / "lidar" / "metrics.tif"
    @property
    def lidar_dtm(self) -> Path: return self.root / "lidar" / "dtm.tif"
    @property
    def lidar_chm(self) -> Path: return self.root / "lidar" / "chm.tif"
    @property
    def lidar_coverage(self) -> Path: return self.root / "lidar" / "coverage.tif"
    @property
    def lidar_tiles(self) -> Path: return self.root / "lidar" / "tiles.csv"
    @property
    def lidar_plot_metrics(self) -> Path: return self.root / "lidar" / "plot_metrics.csv"
    @property
    def lidar_work(self) -> Path: return self.root / "lidar" / ".work"
    # 2b terrain
    @property
    def terrain(self) -> Path: return self.root / "terrain" / "terrain.tif"
    # 3 plots
    @property
    def plots(self) -> Path: return self.root / "plots" / "plots.gpkg"
    @property
    def trees(self) -> Path: return self.root / "plots" / "trees.csv"
    @property
    def equations(self) -> Path: return self.root / "plots" / "equations.csv"
    @property
    def height_models(self) -> Path: return self.root / "plots" / "height_models.csv"
    @property
    def equation_spread(self) -> Path: return self.root / "plots" / "equation_spread.csv"
    # 4 model
    @property
    def model(self) -> Path: return self.root / "model" / "model.joblib"
    @property
    def model_card(self) -> Path: return self.root / "model" / "model_card.json"
    @property
    def training_table(self) -> Path: return self.root / "model" / "training_table.csv"
    # 5 map
    @property
    def agb(self) -> Path: return self.root / "maps" / "agb.tif"
    @property
    def carbon(self) -> Path: return self.root / "maps" / "carbon.tif"
    @property
    def carbon_rule(self) -> Path: return self.root / "maps" / "carbon_rule.tif"
    @property
    def forest_mask(self) -> Path: return self.root / "maps" / "forest_mask.tif"
    @property
    def agb_sd(self) -> Path: return self.root / "maps" / "agb_sd.tif"
    @property
    def agb_p05(self) -> Path: return self.root / "maps" / "agb_p05.tif"
    @property
    def agb_p95(self) -> Path: return self.root / "maps" / "agb_p95.tif"
    @property
    def model_source(self) -> Path: return self.root / "maps" / "model_source.tif"
    @property
    def carbon_sd(self) -> Path: return self.root / "maps" / "carbon_sd.tif"
    @property
    def carbon_p05(self) -> Path: return self.root / "maps" / "carbon_p05.tif"
    @property
    def carbon_p95(self) -> Path: return self.root / "maps" / "carbon_p95.tif"
    @property
    def aoa(self) -> Path: return self.root / "maps" / "aoa.tif"
    @property
    def prediction_work(self) -> Path: return self.root / "maps" / ".prediction.tif"
    # 6 parcels
    @property
    def parcels_gpkg(self) -> Path: return self.root / "parcels" / "parcels_carbon.gpkg"
    @property
    def parcels_parquet(self) -> Path: return self.root / "parcels" / "parcels_carbon.parquet"
    # 7 projects
    @property
    def projects_gpkg(self) -> Path: return self.root / "projects" / "projects_carbon.gpkg"
    @property
    def project_parcels(self) -> Path: return self.root / "projects" / "project_parcels.csv"
    # 7b single trees
    @property
    def trees_dir(self) -> Path: return self.root / "trees"
    @property
    def trees_chm_dir(self) -> Path: return self.root / "trees" / "chm"
    @property
    def trees_gpkg(self) -> Path: return self.root / "trees" / "trees.gpkg"
    @property
    def trees_parquet(self) -> Path: return self.root / "trees" / "trees.parquet"
    @property
    def trees_totals(self) -> Path: return self.root / "trees" / "tree_totals.csv"
    @property
    def trees_dbh_models(self) -> Path: return self.root / "trees" / "dbh_models.csv"
    @property
    def trees_changes(self) -> Path: return self.root / "trees" / "changes.csv"
    @property
    def trees_validation(self) -> Path: return self.root / "trees" / "validation.json"
    # 8 report
    @property
    def report_dir(self) -> Path: return self.root / "report"
    @property
    def summary(self) -> Path: return self.root / "report" / "summary.json"
    @property
    def report_html(self) -> Path: return self.root / "report" / "index.html"
