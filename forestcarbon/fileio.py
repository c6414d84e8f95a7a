"""Atomic writes and file fingerprints shared by every stage.

Outputs are written to a temporary name in the destination folder and renamed
into place when complete (``os.replace`` is atomic on one filesystem), so a
failed run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def disk_full(path: Path, partial: Path | None = None):
    """The one-line error for a full file system: the file, what it had written, and the space left."""
    from .errors import DiskFullError

    written = partial.stat().st_size if partial is not None and partial.exists() else 0
    try:
        free = shutil.disk_usage(next(p for p in (path.parent, *path.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = 0
    return DiskFullError(f"{path}: the disk is full ({written / 2**20:,.1f} MB of it written, "
                         f"{free / 2**20:,.1f} MB free on its file system); free space or write elsewhere "
                         "(the file is not left half-written)")


@contextmanager
def atomic_path(path: Path | str, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except Exception as err:  # GDAL reports ENOSPC as a rasterio error with the C library's message
            if not (getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)):
                raise
            raise disk_full(path, Path(tmp)) from None
    finally:
        for leftover in Path(tmp).parent.glob(Path(tmp).name + "*"):
            leftover.unlink(missing_ok=True)


def write_json(obj, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return Path(path)


def write_table(df, path: Path | str, **kw) -> Path:
    """Write a (Geo)DataFrame atomically; the format follows the suffix (.csv, .parquet, .gpkg)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":  # UTF-8 with a BOM: Excel on Chinese Windows reads 小班 names right
            df.to_csv(tmp, index=False, **{"encoding": "utf-8-sig", **kw})
        elif path.suffix == ".parquet":
            df.to_parquet(tmp, index=False, **kw)
        elif path.suffix == ".gpkg":
            kw.setdefault("layer", path.stem)  # not the temporary name
            df.to_file(tmp, driver="GPKG", **kw)
        else:
            raise ValueError(f"{path}: unsupported table format")
    return path


def sha256(path: Path | str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


HASH_MAX_BYTES = 256 * 2**20  # larger files (scenes, LiDAR tiles) are identified by size and modification time


def fingerprint(paths, relative_to: Path | None = None, skip=()) -> list[dict]:
    """Path (relative to ``relative_to`` when given), size and SHA-256 of each file (folders expanded; files
    larger than :data:`HASH_MAX_BYTES` get their modification time instead of a hash); paths in ``skip``
    and below them are left out."""
    import datetime as dt
    import os

    skip = [Path(q).resolve() for q in skip]
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            continue
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in files:
            rq = q.resolve()
            if any(rq == k or k in rq.parents for k in skip):
                continue
            st = q.stat()
            rec = {"path": os.path.relpath(q, relative_to) if relative_to is not None else str(q), "bytes": st.st_size}
            if st.st_size <= HASH_MAX_BYTES:
                rec["sha256"] = sha256(q)
            else:
                rec["modified"] = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
            out.append(rec)
    return out


def file_rows(positions, limit: int = 5) -> str:
    """Row numbers of data rows as a spreadsheet or text editor shows them -- the header is row 1, the first
    data row row 2 -- from their 0-based positions (a default index's labels); at most ``limit``."""
    rows = [int(p) + 2 for p in positions]
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{rows[:limit]}{more}"
