"""Parcel carbon accounts over epochs (the ledger), stock changes and loss assessment.

:mod:`.store` the storage interface, :mod:`.sqlite_store` its embedded SQLite
implementation, :mod:`.parcels` parcel geometry rows and hashes, :mod:`.change`
stock change and sinks with correlated epoch errors, :mod:`.loss` carbon lost
inside a polygon from the epochs' maps, :mod:`.loss_report` its map and page.
"""
