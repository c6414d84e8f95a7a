"""Parcel ingest: formats and encodings as bureaus deliver them, field mapping, repairs, one-line errors,
and the area-CRS check -- values against hand computation, pyproj and shapely."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import CRS, Proj

from forestcarbon.config import ParcelsConfig
from forestcarbon.errors import CRSError, FieldError
from forestcarbon.vector.area_crs import require_area_crs
from forestcarbon.vector.parcels import ParcelFields, check_parcels, read_parcels

X0, Y0 = 390_000.0, 3_220_000.0  # EPSG:4549 metres near Quzhou (about 118.9°E, 29.1°N)
SPECIES = ["杉木", "马尾松", "毛竹"]


def _layer(n=3, crs="EPSG:4549", **extra):
    """n 100 m x 100 m parcels (1 ha each) in a row, with the usual 小班 fields."""
    geoms = [shapely.box(X0 + 100 * i, Y0, X0 + 100 * (i + 1), Y0 + 100) for i in range(n)]
    data = {"XIAN": ["330802"] * n, "XIANG": ["001"] * n, "CUN": ["012"] * n, "LIN_BAN": ["0005"] * n,
            "XIAO_BAN": [f"{i + 1:03d}" for i in range(n)], "MIAN_JI": [15.0] * n,
            "DI_LEI": ["0111", "0131", "0301"][:n], "YOU_SHI_SZ": SPECIES[:n], "LING_ZU": ["幼龄林", "中龄林", "成熟林"][:n]}
    data.update(extra)
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


FIELDS = ParcelFields(id_fields=("XIAN", "XIANG", "CUN", "LIN_BAN", "XIAO_BAN"), id_separator="-",
                      area_field="MIAN_JI", area_unit="mu", land_class_field="DI_LEI", forest_codes=("0111", "0131"),
                      species_field="YOU_SHI_SZ", age_group_field="LING_ZU")


def test_gbk_shapefile_with_cpg(tmp_path):
    p = tmp_path / "xiaoban.shp"
    pyogrio.write_dataframe(_layer(), p, encoding="GBK")
    assert p.with_suffix(".cpg").read_text().strip().upper() == "GBK"
    assert "杉木".encode("gbk") in p.with_suffix(".dbf").read_bytes()  # really GBK bytes on disk
    out = read_parcels(p, "EPSG:4549", FIELDS).gdf
    assert out["species"].tolist() == SPECIES
    assert out["age_group"].tolist() == ["幼龄林", "中龄林", "成熟林"]
    assert out["parcel_id"].tolist() == ["330802-001-012-0005-001", "330802-001-012-0005-002", "330802-001-012-0005-003"]
    assert out["is_forest"].tolist() == [True, True, False]
    assert out["land_class"].tolist() == ["0111", "0131", "0301"]
    # 15 mu: 1 mu = 60 square zhang, 1 zhang = 10 chi = 10/3 m  ->  15 * 60 * (10/3)^2 m2 = 10,000 m2 = 1 ha
    np.testing.assert_allclose(out["declared_area_ha"], 15 * 60 * (10 / 3) ** 2 / 10_000, rtol=1e-12)
    np.testing.assert_allclose(out["area_ha"], 1.0, rtol=1e-12)
    assert not out["area_flag"].any()
    assert "XIAO_BAN" in out.columns and out["XIAO_BAN"].tolist() == ["001", "002", "003"]  # originals kept


def test_shapefile_without_cpg_takes_configured_encoding(tmp_path):
    p = tmp_path / "nocpg.shp"
    pyogrio.write_dataframe(_layer(), p, encoding="GBK")
    p.with_suffix(".cpg").unlink()
    cfg = ParcelsConfig(id_fields=["XIAO_BAN"], species_field="YOU_SHI_SZ", encoding="GBK")
    out = read_parcels(p, "EPSG:4549", cfg.fields()).gdf
    assert out["species"].tolist() == SPECIES
    with pytest.raises(FieldError) as e:  # no .cpg, no encoding: refuse rather than read mojibake
        read_parcels(p, "EPSG:4549", ParcelFields(id_fields=("XIAO_BAN",)))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "encoding" in msg and "GBK" in msg


@pytest.mark.parametrize("suffix", [".gpkg", ".parquet", ".fgb"])
def test_formats_in_geographic_cgcs2000(tmp_path, suffix):
    """EPSG:4490 input is reprojected to the grid CRS; areas equal shapely's on geopandas' own reprojection."""
    g = _layer().to_crs("EPSG:4490")
    p = tmp_path / f"parcels{suffix}"
    g.to_parquet(p) if suffix == ".parquet" else pyogrio.write_dataframe(g, p)
    out = read_parcels(p, "EPSG:4549", FIELDS).gdf.sort_values("parcel_id")  # FlatGeobuf's index reorders
    ref = shapely.area(np.asarray(g.to_crs("EPSG:4549").geometry.array)) / 10_000
    np.testing.assert_allclose(out["area_ha"], ref, rtol=1e-9)
    np.testing.assert_allclose(out["area_ha"], 1.0, rtol=1e-6)  # the 1 ha boxes survive the round trip
    assert CRS.from_user_input(out.crs).equals(CRS.from_epsg(4549))
    assert out["species"].tolist() == SPECIES


def test_single_id_field_integer_padded(tmp_path):
    g = _layer(XB=[7, 8, 9])
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p)
    out = read_parcels(p, "EPSG:4549", ParcelFields(id_fields=("XB",), id_widths={"XB": 4})).gdf
    assert out["parcel_id"].tolist() == ["0007", "0008", "0009"]


def test_units_and_area_flags(tmp_path):
    g = _layer(MIAN_JI=[15.0, 30.0, 1.0])  # mu: 1 ha (right), 2 ha (wrong: flagged), 1/15 ha (flagged)
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p)
    res = read_parcels(p, "EPSG:4549", FIELDS, area_tolerance_rel=0.05)
    np.testing.assert_allclose(res.gdf["declared_area_ha"], [1.0, 2.0, 1 / 15], rtol=1e-12)
    np.testing.assert_allclose(res.gdf["area_diff_rel"], [0.0, -0.5, 14.0], atol=1e-9)
    assert res.gdf["area_flag"].tolist() == [False, True, True]
    assert res.report["area_flagged"] == 2
    for unit, ha in (("ha", [15.0, 30.0, 1.0]), ("m2", [0.0015, 0.003, 0.0001])):
        f = ParcelFields(id_fields=("XIAO_BAN",), area_field="MIAN_JI", area_unit=unit)
        np.testing.assert_allclose(read_parcels(p, "EPSG:4549", f).gdf["declared_area_ha"], ha, rtol=1e-12)


def test_invalid_geometry_repaired_and_reported(tmp_path):
    g = _layer()
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 200, Y0 + 200), (X0 + 200, Y0), (X0, Y0 + 200)])  # two triangles
    g.loc[1, "geometry"] = bowtie
    assert not bowtie.is_valid
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p)
    res = read_parcels(p, "EPSG:4549", FIELDS)
    assert res.repaired_ids == ["330802-001-012-0005-002"] and res.report["repaired_geometries"] == 1
    # two triangles with legs 200 m and 100 m high: 2 * (200 * 100 / 2) = 20,000 m2 = 2 ha
    assert res.gdf.loc[1, "area_ha"] == pytest.approx(2.0, rel=1e-12)
    assert res.gdf.geometry.is_valid.all()
    assert set(res.gdf.geometry.geom_type) <= {"Polygon", "MultiPolygon"}


def _one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def test_null_geometry_error_names_ids_and_rows(tmp_path):
    g = _layer()
    g.loc[2, "geometry"] = None
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p, layer="xiaoban")
    with pytest.raises(FieldError) as e:
        read_parcels(p, "EPSG:4549", FIELDS, layer="xiaoban")
    _one_line(e, str(p), "'xiaoban'", "330802-001-012-0005-003", "rows [3]")


def test_duplicate_composite_id_error(tmp_path):
    g = _layer(XIAO_BAN=["001", "002", "002"])
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p)
    for check in (lambda: read_parcels(p, "EPSG:4549", FIELDS), lambda: check_parcels(p, FIELDS)):
        with pytest.raises(FieldError) as e:
            check()
        _one_line(e, str(p), "XIAN+XIANG+CUN+LIN_BAN+XIAO_BAN", "330802-001-012-0005-002", "rows [2, 3]")
    check_parcels(p, ParcelFields(id_fields=("XIAO_BAN", "DI_LEI")))  # this key is unique: no error


def test_empty_id_and_missing_field_errors(tmp_path):
    g = _layer(XIAO_BAN=["001", None, "003"])
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(g, p)
    with pytest.raises(FieldError) as e:
        read_parcels(p, "EPSG:4549", FIELDS)
    _one_line(e, str(p), "'XIAO_BAN'", "rows [2]")
    with pytest.raises(FieldError) as e:
        read_parcels(p, "EPSG:4549", ParcelFields(id_fields=("XIAO_BAN",), species_field="SZ"))
    _one_line(e, str(p), "'SZ'")


def test_layer_without_crs(tmp_path):
    p = tmp_path / "noprj.shp"
    pyogrio.write_dataframe(_layer(), p, encoding="GBK")
    p.with_suffix(".prj").unlink()
    with pytest.raises(CRSError) as e:
        read_parcels(p, "EPSG:4549", FIELDS)
    _one_line(e, str(p), "no CRS")


def test_grid_crs_areal_scale_check(tmp_path):
    """Web Mercator at 29°N is refused (areal scale sec²(29°) = 1.31); EPSG:4549 and UTM 50N (CM 117°E) are
    accepted at Quzhou; UTM 51N (CM 123°E, ~4° away) and 49N (CM 111°E) are refused; an equal-area Albers
    is accepted; a geographic CRS is refused."""
    bounds, src = (118.4, 28.5, 119.2, 29.3), "EPSG:4490"
    assert 1 / np.cos(np.radians(29.0)) ** 2 - 1 > 0.3
    for crs in ("EPSG:3857", "EPSG:32651", "EPSG:32649", "EPSG:4490"):
        with pytest.raises(CRSError) as e:
            require_area_crs(crs, bounds, src)
        assert "\n" not in str(e.value)
    assert require_area_crs("EPSG:4549", bounds, src) < 1e-3
    assert require_area_crs("EPSG:32650", bounds, src) < 1e-3
    assert require_area_crs("+proj=aea +lat_1=25 +lat_2=47 +lon_0=105 +ellps=GRS80", bounds, src) < 1e-9
    # independent: Gauss-Krüger point scale k ≈ 1 + (Δλ cos φ)²/2 (Snyder 1987 eq. 8-11 leading term); area ∝ k²
    dl = np.radians(120.0 - 118.4)
    k = 1 + (dl * np.cos(np.radians(28.5))) ** 2 / 2
    assert require_area_crs("EPSG:4549", bounds, src) == pytest.approx(k**2 - 1, rel=0.02)
    assert Proj("EPSG:4549").get_factors(118.4, 28.5).areal_scale - 1 == pytest.approx(k**2 - 1, rel=0.02)
    # through read_parcels: the layer in 4549, the grid asked in Web Mercator
    p = tmp_path / "p.gpkg"
    pyogrio.write_dataframe(_layer(), p)
    with pytest.raises(CRSError) as e:
        read_parcels(p, "EPSG:3857", FIELDS)
    _one_line(e, str(p), "Pseudo-Mercator", "limit 0.100%")
