"""The state of an output folder across runs: one run at a time (a lock), no staging files left from a killed
run, and a manifest of which stages finished, from what, so a re-run skips what is unchanged.

* :func:`output_lock`: an exclusive ``flock`` on ``OUT/.forestcarbon.lock`` for the whole run; the kernel
  releases it when the process dies, so a SIGKILLed run leaves no stale lock.  A second run into the same
  folder fails in one line naming the holder.
* :func:`clean_staging`: every dot-named entry under the stage folders (atomic writes' ``.name.XXXX.tif``,
  ``.staging-*`` COG folders, ``lidar/.work``, ``trees/.work``, the nightly's ``.rRRRcCCC.*``) is a
  leftover of a run that did not finish, removed before the next one starts.
* :func:`stage_key`: a hash of the configuration (all of it but the output folder and compute settings),
  the fingerprints (size, modification time) of every input file and folder it names, the package's source
  code, and the keys and finish times of the stages before it in the manifest.  A stage whose manifest
  entry holds the same key and a finish time is unchanged (``run_manifest.json``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import ForestCarbonError
from ..fileio import write_json

log = logging.getLogger("forestcarbon")

LOCK = ".forestcarbon.lock"
MANIFEST = "run_manifest.json"
STAGE_DIRS = {"mosaic": "mosaic", "lidar": "lidar", "terrain": "terrain", "plots": "plots", "model": "model",
              "map": "maps", "parcels": "parcels", "projects": "projects", "trees": "trees", "report": "report"}


class OutputInUseError(ForestCarbonError, BlockingIOError):
    """Another forestcarbon run holds the output folder."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@contextmanager
def output_lock(root: Path):
    """Hold ``root``'s lock for the duration; one line when another process holds it.  The lock file is
    removed on release (while still locked); a process that opened it before then finds, once it holds the
    lock, that the path names another file or none, and tries again."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise OutputInUseError(f"{root} is in use by another forestcarbon run ({holder}); wait for it to finish "
                                   "or write to another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {_now()}\n")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def clean_staging(root: Path, keep=()) -> list[Path]:
    """Remove the staging leftovers of unfinished runs under the stage folders, except the folders in ``keep``
    (a stage's resumable work, which the stage itself checks against its key); returns what was removed."""
    keep = {Path(k).resolve() for k in keep}
    removed = []
    for sub in STAGE_DIRS.values():
        d = Path(root) / sub
        if not d.is_dir():
            continue
        for p in sorted(d.rglob(".*"), key=lambda q: len(q.parts)):
            if not p.exists() and not p.is_symlink():
                continue  # inside a folder removed already
            if any(p.resolve() == k or k in p.resolve().parents for k in keep):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.warning("removed %d staging files and folders an unfinished run left in %s (e.g. %s)", len(removed),
                    root, removed[0].relative_to(root))
    return removed


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over the package's Python sources and packaged tables (a code change recomputes stages)."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*")):
        if p.suffix in (".py", ".yaml", ".csv", ".json") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(pkg)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _fingerprint(p: Path) -> list:
    if p.is_file():
        st = p.stat()
        return [str(p), st.st_size, st.st_mtime_ns]
    if p.is_dir():
        return [str(p)] + [[str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns]
                           for q in sorted(p.rglob("*")) if q.is_file()]
    return [str(p), None]


def _paths(node) -> list[Path]:
    if isinstance(node, Path):
        return [node]
    if isinstance(node, dict):
        return [q for v in node.values() for q in _paths(v)]
    if isinstance(node, (list, tuple)):
        return [q for v in node for q in _paths(v)]
    return []


def inputs_fingerprint(cfg) -> str:
    """Hash of the configuration (without ``output`` and ``compute``) and of every file or folder it names."""
    raw = cfg.model_dump(exclude={"output", "compute"})
    paths = sorted({p for p in _paths(raw)}, key=str)
    blob = json.dumps([json.loads(cfg.model_dump_json(exclude={"output", "compute"})),
                       [_fingerprint(Path(p)) for p in paths]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(root: Path) -> dict:
    p = Path(root) / MANIFEST
    try:
        return json.loads(p.read_text()) if p.exists() else {"stages": {}}
    except json.JSONDecodeError:
        log.warning("%s is unreadable; every stage runs", p)
        return {"stages": {}}


def stage_key(name: str, inputs_hash: str, manifest: dict, order: list[str]) -> str:
    """The key of stage ``name``: inputs and configuration, code, and the earlier stages' records."""
    earlier = [(s, (manifest["stages"].get(s) or {}).get("key"), (manifest["stages"].get(s) or {}).get("finished"))
               for s in order[:order.index(name)]]
    blob = json.dumps([name, inputs_hash, code_hash(), earlier])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Manifest:
    """``run_manifest.json``: per stage its key, run id, start and finish (UTC) and result; written atomically
    on every change, so a killed run leaves the stages it finished recorded and the one it was in unfinished."""

    def __init__(self, root: Path, run_id: str):
        self.root, self.run_id = Path(root), run_id
        self.data = read_manifest(root)

    def unchanged(self, name: str, key: str) -> dict | None:
        rec = self.data["stages"].get(name)
        folder = self.root / STAGE_DIRS[name]
        if rec and rec.get("key") == key and rec.get("finished") and folder.is_dir() and any(folder.iterdir()):
            return rec
        return None

    def start(self, name: str, key: str, inputs_hash: str | None = None) -> None:
        self.data["stages"][name] = {"key": key, "run_id": self.run_id, "started": _now(), "finished": None,
                                     "inputs": inputs_hash[:16] if inputs_hash else None}
        self._write()

    def finish(self, name: str, result, seconds: float) -> None:
        rec = self.data["stages"][name]
        rec.update(finished=_now(), seconds=round(seconds, 2), result=json.loads(json.dumps(result, default=str)))
        self._write()

    def _write(self) -> None:
        self.data["last_run_id"] = self.run_id
        write_json(self.data, self.root / MANIFEST)
