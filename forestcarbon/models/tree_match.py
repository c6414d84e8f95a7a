"""Matching the trees of two epochs (two LiDAR flights): which tree of epoch B is which tree of epoch A.

Candidate pairs are trees of A and B within ``max_distance_m`` of each other
(k-d tree, ``scipy.spatial.cKDTree.query_ball_tree``), minus pairs whose height
dropped by more than ``max_height_drop_m`` from A to B (a felled tree and a
neighbour or regrowth are not the same tree; growth is not limited).  Among the
candidate pairs, a one-to-one matching is chosen that first has the largest
number of pairs and then, among those, the smallest total distance: on each
connected component of the candidate graph (``scipy.sparse.csgraph.connected_components``)
a rectangular assignment (``scipy.optimize.linear_sum_assignment``) with cost =
distance for candidates and a prohibitive cost M > min(rows, cols)·max_distance_m
for the others, so that any assignment with fewer prohibited pairs is cheaper;
assigned prohibited pairs are then dropped.  Components larger than
``max_dense`` trees a side (dense plantations chaining into one component) are
solved on the sparse graph instead (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``,
LAPJVsp) with a dummy partner per tree at cost M (the tree stays unmatched), which
optimises the same objective.

A tree of A without a partner is ``lost`` (felled, died, missed), one of B
without a partner ``new`` (grown above the detection height, or missed in A).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from ..errors import FieldError

MAX_DENSE = 1500


def _check(df: pd.DataFrame, name: str) -> None:
    for col in ("tree_id", "x", "y", "height_m"):
        if col not in df:
            raise FieldError(f"match_epochs: epoch {name} lacks column {col!r} (have {list(df.columns)})")
    if df["tree_id"].duplicated().any():
        raise FieldError(f"match_epochs: epoch {name} has duplicate tree_id "
                         f"{df['tree_id'][df['tree_id'].duplicated()].tolist()[:5]}")


def candidate_pairs(a: pd.DataFrame, b: pd.DataFrame, max_distance_m: float,
                    max_height_drop_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row in a, row in b, distance m) of every pair within ``max_distance_m`` whose height did not drop
    by more than ``max_height_drop_m``."""
    pa, pb = a[["x", "y"]].to_numpy(float), b[["x", "y"]].to_numpy(float)
    if not len(pa) or not len(pb):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    near = cKDTree(pa).query_ball_tree(cKDTree(pb), r=max_distance_m)
    ia = np.repeat(np.arange(len(pa)), [len(v) for v in near])
    ib = np.fromiter((j for v in near for j in v), dtype=int, count=ia.size)
    dist = np.hypot(*(pa[ia] - pb[ib]).T) if ia.size else np.zeros(0)
    drop = a["height_m"].to_numpy(float)[ia] - b["height_m"].to_numpy(float)[ib]
    ok = (dist <= max_distance_m) & ~(drop > max_height_drop_m)
    return ia[ok], ib[ok], dist[ok]


def _dense(ia, ib, dist, rows, cols, big):
    """Max-cardinality, then min-distance matching of one component by linear_sum_assignment."""
    ra, rb = np.searchsorted(rows, ia), np.searchsorted(cols, ib)
    cost = np.full((rows.size, cols.size), big)
    cost[ra, rb] = dist
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    return rows[r[ok]], cols[c[ok]]


def _sparse(ia, ib, dist, rows, cols, big):
    """The same objective on the sparse graph: A rows + dummy-B rows, B cols + dummy-A cols.

    A_i–B_j: distance; A_i–dummyA_i: big (i unmatched); dummyB_j–B_j: big (j unmatched);
    dummyB_j–dummyA_i for every candidate (i, j): ~0, so that the dummies of a matched pair pair up.
    """
    na, nb = rows.size, cols.size
    ra, rb = np.searchsorted(rows, ia), np.searchsorted(cols, ib)
    eps = 1e-9  # explicit zeros are not edges of a sparse matrix
    r = np.r_[ra, np.arange(na), na + np.arange(nb), na + rb]
    c = np.r_[rb, nb + np.arange(na), np.arange(nb), nb + ra]
    w = np.r_[dist + eps, np.full(na, big), np.full(nb, big), np.full(ra.size, eps)]
    g = sparse.csr_matrix((w, (r, c)), shape=(na + nb, nb + na))
    mr = min_weight_full_bipartite_matching(g)[1]
    sel = np.flatnonzero(mr[:na] < nb)
    return rows[sel], cols[mr[sel]]


def match_epochs(a: pd.DataFrame, b: pd.DataFrame, max_distance_m: float = 2.0, max_height_drop_m: float = 3.0,
                 max_dense: int = MAX_DENSE) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(matched, lost, new) between epochs ``a`` and ``b`` (columns tree_id, x, y, height_m, optional carbon_kg).

    matched: ``id_a``, ``id_b``, ``distance_m``, ``dheight_m`` (b − a), ``dcarbon_kg`` (b − a; NaN without
    carbon_kg), sorted by ``id_a``; lost: the rows of ``a`` without a partner; new: the rows of ``b``
    without one.
    """
    _check(a, "a")
    _check(b, "b")
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    ia, ib, dist = candidate_pairs(a, b, max_distance_m, max_height_drop_m)
    na, nb = len(a), len(b)
    graph = sparse.coo_matrix((np.ones(ia.size), (ia, na + ib)), shape=(na + nb, na + nb))
    _, comp = connected_components(graph, directed=False)
    comp_of_pair = comp[ia]
    order = np.argsort(comp_of_pair, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(comp_of_pair[order]) != 0, True])
    got_a, got_b = [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        k = order[s:e]
        rows, cols = np.unique(ia[k]), np.unique(ib[k])
        big = (min(rows.size, cols.size) + 1) * max(max_distance_m, 1e-6) * 2.0
        solve = _dense if max(rows.size, cols.size) <= max_dense else _sparse
        r, c = solve(ia[k], ib[k], dist[k], rows, cols, big)
        got_a.append(r)
        got_b.append(c)
    ra = np.concatenate(got_a) if got_a else np.zeros(0, int)
    rb = np.concatenate(got_b) if got_b else np.zeros(0, int)
    ca = a["carbon_kg"].to_numpy(float) if "carbon_kg" in a else np.full(na, np.nan)
    cb = b["carbon_kg"].to_numpy(float) if "carbon_kg" in b else np.full(nb, np.nan)
    matched = pd.DataFrame({
        "id_a": a["tree_id"].to_numpy()[ra], "id_b": b["tree_id"].to_numpy()[rb],
        "distance_m": np.hypot(a["x"].to_numpy(float)[ra] - b["x"].to_numpy(float)[rb],
                               a["y"].to_numpy(float)[ra] - b["y"].to_numpy(float)[rb]),
        "dheight_m": b["height_m"].to_numpy(float)[rb] - a["height_m"].to_numpy(float)[ra],
        "dcarbon_kg": cb[rb] - ca[ra]}).sort_values("id_a", kind="stable").reset_index(drop=True)
    lost = a.drop(index=ra).reset_index(drop=True)
    new = b.drop(index=rb).reset_index(drop=True)
    return matched, lost, new
