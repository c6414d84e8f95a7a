"""The embedded store: one SQLite file (stdlib ``sqlite3``).

* WAL journal (readers do not block the writer; https://sqlite.org/wal.html) with
  ``synchronous=FULL``, so a committed epoch survives a power cut, and a killed
  writer leaves the last committed state (https://sqlite.org/atomiccommit.html);
  ``journal="delete"`` gives the rollback journal for file systems without
  shared memory (network shares, where WAL does not work).
* ``foreign_keys=ON``: every stock row references its epoch (whose record holds
  the provenance) and the parcel version it was computed on.
* An epoch is written in one ``BEGIN IMMEDIATE`` ... ``COMMIT``: its old stock
  rows are deleted, the new ones inserted, parcel versions no stock row uses
  any more removed.

Parcel versions: a version is one distinct geometry of a parcel (its
``geometry_sha256``).  An epoch reuses the parcel's version with the same hash
if one exists, else adds version max + 1 with ``valid_from_epoch`` = the epoch.
A version's ``attributes`` are those of the epoch that first recorded it.
"""

from __future__ import annotations

import json
import sqlite3
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import LedgerError
from .store import STOCK_COLUMNS, AccountStore, Epoch, EpochFile, ProgressFn

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch TEXT PRIMARY KEY,
    epoch_date TEXT NOT NULL CHECK (date(epoch_date) = epoch_date),
    model_ids TEXT NOT NULL,            -- JSON list
    scene_ids TEXT NOT NULL,            -- JSON list
    config_sha256 TEXT,
    code_version TEXT NOT NULL,
    source TEXT NOT NULL,
    notes TEXT NOT NULL,                -- JSON list
    created_utc TEXT NOT NULL,
    n_parcels INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS epoch_files (
    epoch TEXT NOT NULL REFERENCES epochs(epoch) ON DELETE CASCADE,
    role TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
    PRIMARY KEY (epoch, role)
);
CREATE TABLE IF NOT EXISTS parcels (
    parcel_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    valid_from_epoch TEXT NOT NULL REFERENCES epochs(epoch),
    geometry_wkb BLOB NOT NULL,
    crs TEXT NOT NULL,
    geometry_sha256 TEXT NOT NULL,
    area_ha REAL NOT NULL CHECK (area_ha > 0),
    attributes TEXT NOT NULL,           -- JSON object
    PRIMARY KEY (parcel_id, version),
    UNIQUE (parcel_id, geometry_sha256)
);
CREATE TABLE IF NOT EXISTS stocks (
    epoch TEXT NOT NULL REFERENCES epochs(epoch) ON DELETE CASCADE,
    parcel_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    area_ha REAL NOT NULL CHECK (area_ha > 0),
    carbon_t REAL CHECK (carbon_t >= 0),
    carbon_sd_t REAL CHECK (carbon_sd_t >= 0),
    carbon_p05_t REAL CHECK (carbon_p05_t >= 0),
    carbon_p95_t REAL CHECK (carbon_p95_t >= 0),
    carbon_above_t REAL,
    carbon_below_t REAL,
    co2e_t REAL,
    co2e_sd_t REAL,
    valid_fraction REAL CHECK (valid_fraction BETWEEN 0 AND 1),
    PRIMARY KEY (epoch, parcel_id),
    FOREIGN KEY (parcel_id, version) REFERENCES parcels(parcel_id, version)
);
CREATE INDEX IF NOT EXISTS stocks_parcel ON stocks(parcel_id);
CREATE INDEX IF NOT EXISTS parcels_from ON parcels(valid_from_epoch);
"""

_BATCH = 20_000


class SQLiteStore(AccountStore):
    """:class:`AccountStore` in one SQLite file.  ``create=False`` refuses a path that does not exist;
    ``journal``: ``"wal"`` or ``"delete"`` (rollback journal)."""

    def __init__(self, path: Path | str, create: bool = True, journal: str | None = None, timeout_s: float = 60.0):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise LedgerError(f"no accounts database at {self.path} (write an epoch first: forestcarbon accounts commit)")
        if journal not in (None, "wal", "delete"):
            raise LedgerError(f"journal {journal!r}: use 'wal' or 'delete'")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are opened and closed explicitly below; a second writer waits up to
        # timeout_s for the first one's transaction, then fails
        self.con = sqlite3.connect(self.path, isolation_level=None, timeout=timeout_s)
        try:
            self.con.execute("PRAGMA foreign_keys = ON")
            self.con.execute("PRAGMA synchronous = FULL")
            tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" not in tables:  # a new database: WAL unless told otherwise
                self.con.execute(f"PRAGMA journal_mode = {journal or 'wal'}")
                self.con.executescript("BEGIN IMMEDIATE;" + _SCHEMA +
                                       f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;")
            elif journal is not None:  # an existing one keeps its journal mode unless one is asked for
                self.con.execute(f"PRAGMA journal_mode = {journal}")
            (found,) = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            self.con.close()
            raise LedgerError(f"{self.path}: not a usable accounts database ({err})") from None
        if found != SCHEMA_VERSION:
            self.con.close()
            raise LedgerError(f"{self.path}: accounts schema version {found}, this code reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.con.close()

    # -- writing -----------------------------------------------------------------
    def write_epoch(self, epoch: Epoch, parcels: pd.DataFrame, progress: ProgressFn | None = None) -> dict:
        n = len(parcels)
        ids = parcels["parcel_id"].astype(str).to_numpy()
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("DELETE FROM stocks WHERE epoch = ?", (epoch.epoch,))
            cur.execute("DELETE FROM epoch_files WHERE epoch = ?", (epoch.epoch,))
            cur.execute(
                "INSERT INTO epochs VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(epoch) DO UPDATE SET "
                "epoch_date=excluded.epoch_date, model_ids=excluded.model_ids, scene_ids=excluded.scene_ids, "
                "config_sha256=excluded.config_sha256, code_version=excluded.code_version, source=excluded.source, "
                "notes=excluded.notes, created_utc=excluded.created_utc, n_parcels=excluded.n_parcels",
                (epoch.epoch, epoch.epoch_date, json.dumps(list(epoch.model_ids)), json.dumps(list(epoch.scene_ids)),
                 epoch.config_sha256, epoch.code_version, epoch.source, json.dumps(list(epoch.notes), ensure_ascii=False),
                 epoch.created_utc, n))
            cur.executemany("INSERT INTO epoch_files VALUES (?,?,?,?)",
                            [(epoch.epoch, f.role, f.path, f.sha256) for f in epoch.files])
            versions = self._assign_versions(cur, ids, parcels["geometry_sha256"].to_numpy())
            new = versions["new"].to_numpy()
            cols = ("geometry_wkb", "crs", "geometry_sha256", "area_ha", "attributes")
            rows_new = zip(ids[new], versions["version"].to_numpy()[new].tolist(), *(parcels[c].to_numpy()[new] for c in cols))
            cur.executemany("INSERT INTO parcels VALUES (?,?,?,?,?,?,?,?)",
                            ((pid, v, epoch.epoch, bytes(w), crs, h, float(a), at) for pid, v, w, crs, h, a, at in rows_new))
            cols = [parcels[c].to_numpy(dtype="float64") if c in parcels else np.full(n, np.nan) for c in STOCK_COLUMNS]
            vers = versions["version"].to_numpy()
            sql = f"INSERT INTO stocks VALUES (?,?,?,{','.join('?' * len(STOCK_COLUMNS))})"
            for start in range(0, n, _BATCH):
                stop = min(start + _BATCH, n)
                block = [[None if v != v else v for v in c[start:stop].tolist()] for c in cols]  # NaN -> NULL
                cur.executemany(sql, zip(repeat(epoch.epoch), ids[start:stop].tolist(), vers[start:stop].tolist(), *block))
                if progress is not None:
                    progress(stop, n)
            cur.execute("DELETE FROM parcels WHERE NOT EXISTS (SELECT 1 FROM stocks s WHERE s.parcel_id = "
                        "parcels.parcel_id AND s.version = parcels.version)")
            cur.execute("COMMIT")
        except BaseException as err:
            if self.con.in_transaction:
                cur.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError):  # locked by another writer, disk full, read-only file
                raise LedgerError(f"{self.path}: epoch {epoch.epoch!r} not written ({err}); the accounts are "
                                  "unchanged") from None
            raise
        return {"stocks": n, "new_versions": int(new.sum())}

    def _assign_versions(self, cur, ids: np.ndarray, hashes: np.ndarray) -> pd.DataFrame:
        """Per parcel: the version with the same geometry hash, or max + 1 (``new``)."""
        have = pd.DataFrame(cur.execute("SELECT parcel_id, version, geometry_sha256 FROM parcels").fetchall(),
                            columns=["parcel_id", "version", "geometry_sha256"])
        want = pd.DataFrame({"parcel_id": ids, "geometry_sha256": hashes})
        m = want.merge(have, on=["parcel_id", "geometry_sha256"], how="left")
        top = have.groupby("parcel_id")["version"].max()
        new = m["version"].isna().to_numpy()
        nxt = m["parcel_id"].map(top).fillna(0).astype("int64") + 1
        m["version"] = np.where(new, nxt, m["version"].fillna(0)).astype("int64")
        m["new"] = new
        return m

    # -- reading -----------------------------------------------------------------
    def epochs(self) -> list[Epoch]:
        files: dict[str, list[EpochFile]] = {}
        for e, role, path, sha in self.con.execute("SELECT epoch, role, path, sha256 FROM epoch_files ORDER BY role"):
            files.setdefault(e, []).append(EpochFile(role, path, sha))
        out = []
        for r in self.con.execute("SELECT epoch, epoch_date, model_ids, scene_ids, config_sha256, code_version, source, "
                                  "notes, created_utc, n_parcels FROM epochs ORDER BY epoch_date, epoch"):
            out.append(Epoch(r[0], r[1], tuple(json.loads(r[2])), tuple(json.loads(r[3])), r[4], r[5], r[6],
                             tuple(files.get(r[0], [])), tuple(json.loads(r[7])), r[8], r[9]))
        return out

    def stocks(self, epoch: str) -> pd.DataFrame:
        self.epoch(epoch)  # an error naming the epochs there are
        df = pd.read_sql_query(f"SELECT parcel_id, version, {', '.join(STOCK_COLUMNS)} FROM stocks WHERE epoch = ? "
                               "ORDER BY parcel_id", self.con, params=(epoch,))
        return _floats(df)

    def parcel_history(self, parcel_id: str) -> pd.DataFrame:
        df = pd.read_sql_query(f"SELECT s.epoch, e.epoch_date, s.version, {', '.join('s.' + c for c in STOCK_COLUMNS)} "
                               "FROM stocks s JOIN epochs e USING (epoch) WHERE s.parcel_id = ? "
                               "ORDER BY e.epoch_date, s.epoch", self.con, params=(str(parcel_id),))
        if df.empty:
            raise LedgerError(f"parcel {parcel_id!r} is not in the accounts ({self.path})")
        return _floats(df)

    def parcel_versions(self, epoch: str | None = None, parcel_id: str | None = None) -> pd.DataFrame:
        cols = "p.parcel_id, p.version, p.valid_from_epoch, p.geometry_wkb, p.crs, p.geometry_sha256, p.area_ha, p.attributes"
        if epoch is not None:
            self.epoch(epoch)
            sql, params = (f"SELECT {cols} FROM parcels p JOIN stocks s ON s.parcel_id = p.parcel_id AND "
                           "s.version = p.version WHERE s.epoch = ? ORDER BY p.parcel_id"), (epoch,)
        elif parcel_id is not None:
            sql, params = f"SELECT {cols} FROM parcels p WHERE p.parcel_id = ? ORDER BY p.version", (str(parcel_id),)
        else:
            sql, params = f"SELECT {cols} FROM parcels p ORDER BY p.parcel_id, p.version", ()
        return pd.read_sql_query(sql, self.con, params=params)

    def integrity_check(self) -> str:
        return self.con.execute("PRAGMA integrity_check").fetchone()[0]


def _floats(df: pd.DataFrame) -> pd.DataFrame:
    for c in STOCK_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df
