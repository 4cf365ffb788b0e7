"""The durable spool of received instances: files written as received, then indexed.

Layout under the data folder (every name is made here, from hashes of UIDs, never from DICOM
values):

    spool/tmp/                         files being written (removed at start-up)
    spool/studies/<study>/<series>/<instance>.dcm
    spool/conflicts/<instance>-<digest>.dcm   same UID, other bytes (kept, not processed)

A file is written to spool/tmp, fsynced, hard-linked into place (never overwriting), its folder
fsynced, then indexed; only then does the caller answer success.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from node.database import Database
from node.records import InstanceMeta, StoreOutcome

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"


class OutOfSpace(Exception):
    """The spool's filesystem is below its free-space reserve (or full)."""


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance is, and whether it was new."""

    outcome: StoreOutcome
    rel_path: str
    sha256: str


def uid_key(uid: str) -> str:
    """Our file-name key for a UID: 32 hex characters of its SHA-256."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Writes received instances durably and indexes them."""

    def __init__(self, data_dir: Path, database: Database, free_space_reserve_mb: float, fsync: bool = True) -> None:
        self.data_dir = data_dir
        self.root = data_dir / SPOOL_DIR
        self.tmp_dir = self.root / "tmp"
        self.database = database
        self.reserve_bytes = int(free_space_reserve_mb * 1024 * 1024)
        self.fsync = fsync
        self._dir_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        for folder in (self.tmp_dir, self.root / "studies", self.root / "conflicts"):
            folder.mkdir(parents=True, exist_ok=True)

    def remove_partial_files(self) -> int:
        """Delete files left in spool/tmp by an interrupted write (never acknowledged)."""
        count = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            count += 1
        if count:
            log.warning("removed %d partial file(s) left by an interrupted receive", count)
        return count

    def has_room_for(self, size_bytes: int) -> bool:
        """Whether `size_bytes` more would leave the free-space reserve intact."""
        return shutil.disk_usage(self.root).free - size_bytes >= self.reserve_bytes

    def store(self, meta: InstanceMeta, parts: tuple[bytes, ...], digest_part: bytes) -> StoredInstance:
        """Write the file (the concatenation of `parts`) durably and index it.

        `digest_part` (the data set without file meta) decides duplicate versus conflict.
        Raises OutOfSpace when the reserve would be broken or the disk is full.
        """
        size = sum(len(p) for p in parts)
        if not self.has_room_for(size):
            raise OutOfSpace(f"less than {self.reserve_bytes // (1024 * 1024)} MB would stay free")
        sha256 = hashlib.sha256(digest_part).hexdigest()
        existing = self.database.find_instance(meta.sop_instance_uid)
        if existing is not None:
            if existing[1] == sha256:
                return StoredInstance(StoreOutcome.DUPLICATE, existing[0], sha256)
            rel = f"{SPOOL_DIR}/conflicts/{uid_key(meta.sop_instance_uid)}-{sha256[:16]}.dcm"
            self._write(parts, self.data_dir / rel)
            outcome = self.database.record_instance(meta, rel, size, sha256)
            return StoredInstance(outcome, rel, sha256)
        rel = (f"{SPOOL_DIR}/studies/{uid_key(meta.study_uid)}/{uid_key(meta.series_uid)}/"
               f"{uid_key(meta.sop_instance_uid)}.dcm")
        final = self.data_dir / rel
        created = self._write(parts, final)
        if not created:
            # Same path already written (an earlier receive that was never indexed, or a
            # concurrent one): compare its bytes with ours.
            on_disk = final.read_bytes()
            if hashlib.sha256(on_disk[len(on_disk) - len(digest_part):]).hexdigest() != sha256:
                rel = f"{SPOOL_DIR}/conflicts/{uid_key(meta.sop_instance_uid)}-{sha256[:16]}.dcm"
                self._write(parts, self.data_dir / rel)
        outcome = self.database.record_instance(meta, rel, size, sha256)
        if outcome == StoreOutcome.CONFLICT and rel == (final.relative_to(self.data_dir).as_posix()):
            # Indexed meanwhile by a concurrent association with other bytes: keep ours aside.
            rel = f"{SPOOL_DIR}/conflicts/{uid_key(meta.sop_instance_uid)}-{sha256[:16]}.dcm"
            self._write(parts, self.data_dir / rel)
        return StoredInstance(outcome, rel, sha256)

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        with self._dir_lock:
            missing = []
            probe = folder
            while not probe.exists():
                missing.append(probe)
                probe = probe.parent
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                for made in reversed(missing):
                    _fsync_dir(made.parent)
            self._known_dirs.add(folder)

    def _write(self, parts: tuple[bytes, ...], final: Path) -> bool:
        """Write `parts` to `final` durably, never overwriting. False if `final` already existed."""
        self._ensure_dir(final.parent)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as handle:
                for part in parts:
                    handle.write(part)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            if self.fsync:
                _fsync_dir(final.parent)
            return True
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace(f"disk full: {error.strerror}") from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
