"""Inventory tables (trees, plots) from CSV, Excel or GeoPackage, with column mapping and checks.

Columns are renamed from the file's names to ours (``dbh_cm``, ``height_m``,
``species``...) by a mapping ``{our_name: file_column}``; every error names the
file, the column and the offending rows (numbered as a spreadsheet or text
editor shows them: the header is row 1, the first data row row 2) and values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FieldError, InputNotFoundError
from ..fileio import file_rows

TREE_COLUMNS = ("plot_id", "tree_id", "species", "dbh_cm")
OPTIONAL_TREE_COLUMNS = ("height_m", "wood_density_g_cm3", "age", "status", "x", "y")
STATUS = {"alive": "alive", "live": "alive", "living": "alive", "活": "alive", "活立木": "alive",
          "dead": "dead", "死": "dead", "枯立木": "dead", "standing dead": "dead"}


def read_table(path: Path | str, sheet: str | None = None) -> pd.DataFrame:
    """A table from .csv/.txt, .xlsx/.xls (first or named sheet) or a GeoPackage/Shapefile layer (attributes)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"table not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype={"plot_id": str, "tree_id": str})
        if suffix in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, sheet_name=sheet or 0)
        if suffix in (".gpkg", ".shp", ".geojson", ".fgb"):
            import geopandas as gpd

            gdf = gpd.read_file(path, layer=sheet)
            if gdf.geometry.notna().any() and (gdf.geom_type == "Point").all():
                gdf["x"], gdf["y"] = gdf.geometry.x, gdf.geometry.y
            return pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    except (ValueError, KeyError) as err:
        raise FieldError(f"{path}: cannot read table ({str(err).splitlines()[0]})") from None
    raise FieldError(f"{path}: unsupported table format {suffix!r} (use .csv, .xlsx or .gpkg)")


def rename_columns(df: pd.DataFrame, mapping: dict[str, str], source: str) -> pd.DataFrame:
    """Rename the file's columns to ours; a mapped column that is not in the file is an error."""
    missing = {ours: theirs for ours, theirs in mapping.items() if theirs not in df.columns}
    if missing:
        raise FieldError(f"{source}: mapped columns not in the file: "
                         f"{', '.join(f'{o} <- {t!r}' for o, t in missing.items())} (columns: {list(df.columns)})")
    return df.rename(columns={theirs: ours for ours, theirs in mapping.items()})


def data_rows(mask) -> str:
    """File row numbers (header = row 1) of the rows a mask marks: a boolean Series by its index labels
    (0-based positions in the file, kept through filtering), an array by position."""
    if isinstance(mask, pd.Series):
        return file_rows(mask.index[mask.to_numpy(bool)])
    return file_rows(np.flatnonzero(np.asarray(mask)))


def read_trees(path: Path | str, columns: dict[str, str] | None = None, sheet: str | None = None) -> pd.DataFrame:
    """Tree list with ``plot_id``, ``tree_id``, ``species``, ``dbh_cm`` and optional columns.

    ``status`` (alive/dead, also 活/死) becomes ``alive`` / ``dead``; a missing
    status means alive.  Duplicated (plot_id, tree_id) pairs are an error.
    """
    source = str(path)
    t = rename_columns(read_table(path, sheet), columns or {}, source)
    if len(t) == 0:
        raise FieldError(f"{source}: the trees table has no data rows (columns {list(t.columns)})")
    for col in TREE_COLUMNS:
        if col not in t.columns:
            raise FieldError(f"{source}: missing column {col!r} (have {list(t.columns)}; map it in ground.trees_columns)")
    t["plot_id"] = t["plot_id"].astype(str)
    t["tree_id"] = t["tree_id"].astype(str)
    dup = t.duplicated(["plot_id", "tree_id"], keep=False)
    if dup.any():
        pairs = sorted(set(zip(t.loc[dup, "plot_id"], t.loc[dup, "tree_id"])))[:5]
        raise FieldError(f"{source}: duplicated tree ids (plot_id, tree_id) {pairs} in rows {data_rows(dup)}")
    for col in ("dbh_cm", "height_m", "wood_density_g_cm3", "age"):
        if col in t.columns:
            num = pd.to_numeric(t[col], errors="coerce")
            bad = num.isna() & t[col].notna()
            if bad.any():
                raise FieldError(f"{source}: column {col!r} is not numeric in rows {data_rows(bad)}: {list(t.loc[bad, col][:5])}")
            t[col] = num
    if "status" in t.columns:
        s = t["status"].fillna("alive").astype(str).str.strip().str.casefold().map(STATUS)
        bad = s.isna()
        if bad.any():
            raise FieldError(f"{source}: column 'status' must be alive or dead; rows {data_rows(bad)} have "
                             f"{list(t.loc[bad, 'status'][:5])}")
        t["status"] = s
    else:
        t["status"] = "alive"
    return t
