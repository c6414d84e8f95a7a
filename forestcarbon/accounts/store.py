"""The storage interface of the parcel carbon accounts (the ledger).

The accounts hold, per epoch (a dated run of the pipeline), one stock row per
parcel, and each parcel's geometry as versions: a parcel gets a new version
when its geometry changes, old versions stay.  Everything the rest of the
package needs from a store is :class:`AccountStore`; the embedded SQLite store
(:mod:`forestcarbon.accounts.sqlite_store`) implements it, a server database
can implement it later without touching the callers.

Contract every implementation keeps:

* :meth:`AccountStore.write_epoch` is one transaction: after a crash the
  store holds the accounts as they were before the call, never a part;
* writing an epoch that exists replaces its rows (idempotent: no duplicates);
* each stock row names its epoch, whose record carries the provenance
  (model card ids, scenes, configuration hash, code version, files + SHA-256).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..errors import LedgerError

STOCK_COLUMNS = ("area_ha", "carbon_t", "carbon_sd_t", "carbon_p05_t", "carbon_p95_t", "carbon_above_t",
                 "carbon_below_t", "co2e_t", "co2e_sd_t", "valid_fraction")
"""Numeric stock columns (NULL/NaN where the epoch's parcel table had no such value)."""

PARCEL_COLUMNS = ("parcel_id", "geometry_wkb", "crs", "geometry_sha256", "attributes")
"""What :meth:`AccountStore.write_epoch` needs per parcel besides :data:`STOCK_COLUMNS`."""


@dataclass(frozen=True)
class EpochFile:
    """A file an epoch was computed from or produced (``role``: carbon, carbon_sd, parcels, model_card ...)."""

    role: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Epoch:
    """One epoch's provenance: enough to trace every stock row back to the run that made it."""

    epoch: str                       # label, e.g. "2024"
    epoch_date: str                  # ISO date the stocks refer to (sinks per year use it)
    model_ids: tuple[str, ...]
    scene_ids: tuple[str, ...]
    config_sha256: str | None
    code_version: str                # forestcarbon version + git commit of the run
    source: str                      # the pipeline output folder
    files: tuple[EpochFile, ...] = ()
    notes: tuple[str, ...] = ()
    created_utc: str = ""
    n_parcels: int = 0

    def file(self, role: str) -> EpochFile:
        for f in self.files:
            if f.role == role:
                return f
        raise LedgerError(f"epoch {self.epoch!r} records no {role} file (it has: {[f.role for f in self.files]})")


ProgressFn = Callable[[int, int], None]
"""Called as ``progress(rows_written, rows_total)`` between batches inside the write transaction."""


class AccountStore(ABC):
    """Storage of parcel versions, epochs and stocks (see the module docstring for the contract)."""

    @abstractmethod
    def write_epoch(self, epoch: Epoch, parcels: pd.DataFrame, progress: ProgressFn | None = None) -> dict:
        """Write (or replace) ``epoch`` with one row per parcel of ``parcels`` (columns :data:`PARCEL_COLUMNS`
        and :data:`STOCK_COLUMNS`) in one transaction; return counts (stocks, new_versions)."""

    @abstractmethod
    def epochs(self) -> list[Epoch]:
        """All epochs, by date then label."""

    @abstractmethod
    def stocks(self, epoch: str) -> pd.DataFrame:
        """The epoch's stock rows: ``parcel_id``, ``version`` and :data:`STOCK_COLUMNS` (NaN for NULL)."""

    @abstractmethod
    def parcel_history(self, parcel_id: str) -> pd.DataFrame:
        """The parcel's stock rows over all epochs (``epoch``, ``epoch_date``, ``version``, stock columns), by date."""

    @abstractmethod
    def parcel_versions(self, epoch: str | None = None, parcel_id: str | None = None) -> pd.DataFrame:
        """Parcel versions (``parcel_id``, ``version``, ``valid_from_epoch``, ``geometry_wkb``, ``crs``,
        ``geometry_sha256``, ``attributes``): those the epoch's stocks use, or one parcel's, or all."""

    @abstractmethod
    def close(self) -> None: ...

    def epoch(self, label: str) -> Epoch:
        for e in self.epochs():
            if e.epoch == label:
                return e
        have = [e.epoch for e in self.epochs()]
        raise LedgerError(f"epoch {label!r} is not in the accounts (epochs: {have or 'none'})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
