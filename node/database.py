"""The node's index and job queue in SQLite (WAL). The only module with SQL in it.

One `Database` object per process, shared by threads (a lock serialises access). Every write is
one transaction (``BEGIN IMMEDIATE``), committed with ``synchronous=FULL`` so that a committed
row survives a crash. Paths are stored relative to the data folder and are made by the node from
its own identifiers, never from DICOM values.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from node.lifecycle import (
    OutboxState,
    StudyState,
    can_transition,
    retry_delay_s,
    state_after_failure,
    state_on_new_input,
    study_state_from_outbox,
)
from node.records import (
    InstanceMeta,
    Job,
    OutboxItem,
    ResultFile,
    SendResult,
    SeriesSnapshot,
    StoreOutcome,
    StudyRow,
    StudySnapshot,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    ready_at REAL,
    processed_at REAL,
    delivered_at REAL,
    next_attempt_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    series_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    description TEXT NOT NULL,
    acquisition_time_s REAL,
    bolus_start_time_s REAL,
    processable INTEGER NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    series_id INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    generation INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL DEFAULT 'running',
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    generation INTEGER NOT NULL,
    attempt_id INTEGER NOT NULL REFERENCES attempts(id),
    rel_path TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    result_id INTEGER NOT NULL REFERENCES results(id),
    destination TEXT NOT NULL,
    action TEXT NOT NULL DEFAULT 'store',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status TEXT NOT NULL DEFAULT '',
    sent_at REAL,
    UNIQUE (result_id, destination, action)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_id);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, destination);
CREATE INDEX IF NOT EXISTS results_study ON results(study_id);
"""


class StudyNotFound(LookupError):
    """No study matches the given UID or number."""


class Database:
    """The index of received instances, the study lifecycle, attempts, results and outboxes."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ----------------------------------------------------------------------------------------
    # receiving

    def find_instance(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(relative path, sha256) of an indexed instance, or None."""
        rows = self._read("SELECT rel_path, sha256 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return rows[0] if rows else None

    def record_instance(
        self, meta: InstanceMeta, rel_path: str, size_bytes: int, sha256: str, now: float | None = None
    ) -> StoreOutcome:
        """Index a stored instance (its file is already durable at `rel_path`).

        A new instance of a study that has started processing starts a new generation (the study
        goes back to receiving and will be reprocessed). Returns DUPLICATE when the UID is already
        indexed with the same digest, CONFLICT when with another (the first copy stays indexed).
        """
        now = time.time() if now is None else now
        with self._write() as cur:
            row = cur.execute(
                "SELECT sha256 FROM instances WHERE sop_instance_uid = ?", (meta.sop_instance_uid,)
            ).fetchone()
            if row is not None:
                if row[0] == sha256:
                    return StoreOutcome.DUPLICATE
                cur.execute(
                    "INSERT INTO conflicts (sop_instance_uid, rel_path, sha256, received_at) VALUES (?,?,?,?)",
                    (meta.sop_instance_uid, rel_path, sha256, now),
                )
                return StoreOutcome.CONFLICT
            study = cur.execute("SELECT id, state, generation FROM studies WHERE study_uid = ?",
                                (meta.study_uid,)).fetchone()
            if study is None:
                cur.execute(
                    "INSERT INTO studies (study_uid, state, first_received_at, last_received_at, updated_at)"
                    " VALUES (?,?,?,?,?)",
                    (meta.study_uid, StudyState.RECEIVING.value, now, now, now),
                )
                study_id = cur.lastrowid
            else:
                study_id, state, generation = study
                new_state, new_generation = state_on_new_input(StudyState(state))
                if new_generation:
                    cur.execute(
                        "UPDATE studies SET state=?, generation=generation+1, attempts=0, next_attempt_at=NULL,"
                        " reason='new input after processing started', first_received_at=?,"
                        " last_received_at=?, updated_at=? WHERE id=?",
                        (new_state.value, now, now, now, study_id),
                    )
                else:
                    cur.execute(
                        "UPDATE studies SET state=?, last_received_at=?, updated_at=? WHERE id=?",
                        (new_state.value, now, now, study_id),
                    )
            series = cur.execute("SELECT id FROM series WHERE series_uid = ?", (meta.series_uid,)).fetchone()
            if series is None:
                cur.execute(
                    "INSERT INTO series (study_id, series_uid, modality, description, acquisition_time_s,"
                    " bolus_start_time_s, processable, first_received_at) VALUES (?,?,?,?,?,?,?,?)",
                    (study_id, meta.series_uid, meta.modality, meta.series_description,
                     meta.acquisition_time_s, meta.bolus_start_time_s, int(meta.processable), now),
                )
                series_id = cur.lastrowid
            else:
                series_id = series[0]
                cur.execute(
                    "UPDATE series SET acquisition_time_s = MIN(COALESCE(acquisition_time_s, ?), ?)"
                    " WHERE id = ? AND ? IS NOT NULL",
                    (meta.acquisition_time_s, meta.acquisition_time_s, series_id, meta.acquisition_time_s),
                )
            cur.execute("UPDATE series SET instances = instances + 1 WHERE id = ?", (series_id,))
            cur.execute(
                "INSERT INTO instances (study_id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " rel_path, size_bytes, sha256, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (study_id, series_id, meta.sop_instance_uid, meta.sop_class_uid, meta.transfer_syntax_uid,
                 rel_path, size_bytes, sha256, now),
            )
            return StoreOutcome.STORED

    def indexed_paths(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of every indexed instance."""
        return self._read("SELECT rel_path, sha256 FROM instances ORDER BY id")

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every indexed instance."""
        return {r[0] for r in self._read("SELECT sop_instance_uid FROM instances")}

    # ----------------------------------------------------------------------------------------
    # completeness and queue

    def receiving_studies(self) -> list[StudySnapshot]:
        """Every study in RECEIVING, with its series."""
        studies = self._read(
            "SELECT id, study_uid, generation, first_received_at, last_received_at FROM studies WHERE state = ?",
            (StudyState.RECEIVING.value,),
        )
        out: list[StudySnapshot] = []
        for study_id, uid, generation, first, last in studies:
            series = self._read(
                "SELECT series_uid, description, acquisition_time_s, bolus_start_time_s, instances, processable"
                " FROM series WHERE study_id = ? ORDER BY id",
                (study_id,),
            )
            out.append(StudySnapshot(
                study_id, uid, generation, first, last,
                tuple(SeriesSnapshot(s[0], s[1], s[2], s[3], s[4], bool(s[5])) for s in series),
            ))
        return out

    def mark_ready(self, study_id: int, generation: int, reason: str, now: float | None = None) -> bool:
        """RECEIVING -> READY if the study is still at `generation`; False if it moved on."""
        now = time.time() if now is None else now
        with self._write() as cur:
            changed = cur.execute(
                "UPDATE studies SET state=?, ready_at=?, next_attempt_at=?, reason=?, updated_at=?"
                " WHERE id=? AND generation=? AND state=?",
                (StudyState.READY.value, now, now, reason, now, study_id, generation, StudyState.RECEIVING.value),
            ).rowcount
        return changed == 1

    def mark_ignored(self, study_id: int, generation: int, reason: str) -> bool:
        """RECEIVING -> IGNORED (nothing processable arrived before the deadline)."""
        now = time.time()
        with self._write() as cur:
            return cur.execute(
                "UPDATE studies SET state=?, reason=?, updated_at=? WHERE id=? AND generation=? AND state=?",
                (StudyState.IGNORED.value, reason, now, study_id, generation, StudyState.RECEIVING.value),
            ).rowcount == 1

    def start_next_job(self, data_dir: Path, now: float | None = None) -> Job | None:
        """Take the oldest due study (READY, or FAILED past its backoff), record the attempt and
        move it to PROCESSING, all before anything runs. None when nothing is due."""
        now = time.time() if now is None else now
        with self._write() as cur:
            row = cur.execute(
                "SELECT id, study_uid, generation, attempts FROM studies WHERE state IN (?, ?)"
                " AND COALESCE(next_attempt_at, 0) <= ? ORDER BY next_attempt_at, id LIMIT 1",
                (StudyState.READY.value, StudyState.FAILED.value, now),
            ).fetchone()
            if row is None:
                return None
            study_id, uid, generation, attempts = row
            number = attempts + 1
            cur.execute(
                "UPDATE studies SET state=?, attempts=?, updated_at=? WHERE id=?",
                (StudyState.PROCESSING.value, number, now, study_id),
            )
            cur.execute(
                "INSERT INTO attempts (study_id, generation, number, started_at) VALUES (?,?,?,?)",
                (study_id, generation, number, now),
            )
            attempt_id = cur.lastrowid
            paths = cur.execute(
                "SELECT i.rel_path FROM instances i JOIN series s ON s.id = i.series_id"
                " WHERE i.study_id = ? AND s.processable = 1 ORDER BY i.id",
                (study_id,),
            ).fetchall()
        return Job(study_id, uid, generation, number, attempt_id, tuple(data_dir / p[0] for p in paths))

    def finish_success(
        self,
        job: Job,
        results: Sequence[ResultFile],
        destinations: Sequence[str],
        data_dir: Path,
        message: str,
        delete_superseded: Sequence[str] = (),
        now: float | None = None,
    ) -> bool:
        """Record a finished attempt's results and fill the outboxes, in one transaction.

        Earlier generations' results become superseded and their unsent items are cancelled; for
        the destinations in `delete_superseded`, superseded objects that were sent and are not among
        the new results get a "delete" item. If the study moved on (new input arrived meanwhile),
        the results are kept as superseded and False is returned.
        """
        now = time.time() if now is None else now
        with self._write() as cur:
            current = cur.execute("SELECT generation, state FROM studies WHERE id=?", (job.study_id,)).fetchone()
            still_current = current is not None and current[0] == job.generation and \
                current[1] == StudyState.PROCESSING.value
            outcome = "succeeded" if still_current else "superseded"
            cur.execute("UPDATE attempts SET finished_at=?, outcome=?, message=? WHERE id=?",
                        (now, outcome, message, job.attempt_id))
            result_ids = []
            for result in results:
                cur.execute(
                    "INSERT INTO results (study_id, generation, attempt_id, rel_path, sop_class_uid, sop_instance_uid,"
                    " series_uid, superseded) VALUES (?,?,?,?,?,?,?,?)",
                    (job.study_id, job.generation, job.attempt_id, str(result.path.relative_to(data_dir)),
                     result.sop_class_uid, result.sop_instance_uid, result.series_uid, 0 if still_current else 1),
                )
                result_ids.append(cur.lastrowid)
            if not still_current:
                return False
            new_uids = {r.sop_instance_uid for r in results}
            old = cur.execute(
                "SELECT id, sop_instance_uid FROM results WHERE study_id=? AND superseded=0 AND attempt_id<>?",
                (job.study_id, job.attempt_id),
            ).fetchall()
            for old_id, old_uid in old:
                cur.execute("UPDATE results SET superseded=1 WHERE id=?", (old_id,))
                cur.execute("UPDATE outbox SET state=? WHERE result_id=? AND state=?",
                            (OutboxState.CANCELLED.value, old_id, OutboxState.PENDING.value))
                if old_uid in new_uids:
                    continue
                for dest in delete_superseded:
                    sent = cur.execute(
                        "SELECT 1 FROM outbox WHERE result_id=? AND destination=? AND action='store' AND state=?",
                        (old_id, dest, OutboxState.SENT.value)).fetchone()
                    if sent:
                        cur.execute(
                            "INSERT OR IGNORE INTO outbox (result_id, destination, action, state, next_attempt_at)"
                            " VALUES (?,?,?,?,?)", (old_id, dest, "delete", OutboxState.PENDING.value, now))
            for result_id in result_ids:
                for dest in destinations:
                    cur.execute(
                        "INSERT INTO outbox (result_id, destination, action, state, next_attempt_at) VALUES (?,?,?,?,?)",
                        (result_id, dest, "store", OutboxState.PENDING.value, now),
                    )
            state = StudyState.DELIVERING if destinations and result_ids else StudyState.DELIVERED
            cur.execute(
                "UPDATE studies SET state=?, processed_at=?, delivered_at=?, next_attempt_at=NULL, reason=?,"
                " updated_at=? WHERE id=?",
                (state.value, now, now if state == StudyState.DELIVERED else None, message, now, job.study_id),
            )
        return True

    def finish_failure(
        self, job: Job, reason: str, max_attempts: int, backoff: tuple[float, float, float],
        now: float | None = None,
    ) -> StudyState | None:
        """Record a failed attempt: FAILED with a retry time, or QUARANTINED after `max_attempts`.
        Returns the new state, or None if the study had moved on (new input)."""
        now = time.time() if now is None else now
        with self._write() as cur:
            cur.execute("UPDATE attempts SET finished_at=?, outcome=?, message=? WHERE id=?",
                        (now, "failed", reason, job.attempt_id))
            current = cur.execute("SELECT generation, state, attempts FROM studies WHERE id=?",
                                  (job.study_id,)).fetchone()
            if current is None or current[0] != job.generation or current[1] != StudyState.PROCESSING.value:
                return None
            state = state_after_failure(current[2], max_attempts)
            retry_at = now + retry_delay_s(current[2], *backoff) if state == StudyState.FAILED else None
            cur.execute(
                "UPDATE studies SET state=?, next_attempt_at=?, reason=?, updated_at=? WHERE id=?",
                (state.value, retry_at, reason, now, job.study_id),
            )
        return state

    def recover_interrupted(self, max_attempts: int) -> list[str]:
        """After a restart: studies left in PROCESSING go back to READY (their attempt already
        counts), or to QUARANTINED if that was the last one. Returns their UIDs."""
        now = time.time()
        with self._write() as cur:
            rows = cur.execute("SELECT id, study_uid, attempts FROM studies WHERE state=?",
                               (StudyState.PROCESSING.value,)).fetchall()
            cur.execute("UPDATE attempts SET finished_at=?, outcome='interrupted',"
                        " message='the node stopped during this attempt' WHERE outcome='running'", (now,))
            for study_id, _uid, attempts in rows:
                state = StudyState.QUARANTINED if attempts >= max_attempts else StudyState.READY
                cur.execute(
                    "UPDATE studies SET state=?, next_attempt_at=?, reason=?, updated_at=? WHERE id=?",
                    (state.value, now, "interrupted: the node stopped during processing", now, study_id),
                )
        return [r[1] for r in rows]

    # ----------------------------------------------------------------------------------------
    # outbox

    def due_outbox(self, destination: str, now: float | None = None, limit: int = 200) -> list[OutboxItem]:
        """Pending items of one destination whose retry time has come."""
        now = time.time() if now is None else now
        rows = self._read(
            "SELECT o.id, r.study_id, s.study_uid, o.destination, r.rel_path, r.sop_class_uid, r.sop_instance_uid,"
            " o.attempts, o.action FROM outbox o JOIN results r ON r.id = o.result_id JOIN studies s ON s.id = r.study_id"
            " WHERE o.state=? AND o.destination=? AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
            (OutboxState.PENDING.value, destination, now, limit),
        )
        return [OutboxItem(r[0], r[1], r[2], r[3], Path(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    def record_sends(
        self, results: Sequence[SendResult], max_attempts: int, backoff: tuple[float, float, float],
        now: float | None = None,
    ) -> list[int]:
        """Record per-object outcomes; update each affected study's state. Returns the study ids
        that became DELIVERED."""
        now = time.time() if now is None else now
        delivered: list[int] = []
        with self._write() as cur:
            studies: set[int] = set()
            for res in results:
                row = cur.execute("SELECT o.attempts, r.study_id FROM outbox o JOIN results r ON r.id=o.result_id"
                                  " WHERE o.id=?", (res.item_id,)).fetchone()
                if row is None:
                    continue
                attempts = row[0] + 1
                studies.add(row[1])
                if res.ok:
                    cur.execute("UPDATE outbox SET state=?, attempts=?, last_status=?, sent_at=? WHERE id=? AND state=?",
                                (OutboxState.SENT.value, attempts, res.status, now, res.item_id,
                                 OutboxState.PENDING.value))
                elif not res.transient or attempts >= max_attempts:
                    cur.execute("UPDATE outbox SET state=?, attempts=?, last_status=? WHERE id=? AND state=?",
                                (OutboxState.DEAD.value, attempts, res.status, res.item_id, OutboxState.PENDING.value))
                else:
                    cur.execute("UPDATE outbox SET attempts=?, last_status=?, next_attempt_at=? WHERE id=? AND state=?",
                                (attempts, res.status, now + retry_delay_s(attempts, *backoff), res.item_id,
                                 OutboxState.PENDING.value))
            for study_id in studies:
                if self._refresh_delivery_state(cur, study_id, now) == StudyState.DELIVERED:
                    delivered.append(study_id)
        return delivered

    def _refresh_delivery_state(self, cur: sqlite3.Cursor, study_id: int, now: float) -> StudyState | None:
        state = StudyState(cur.execute("SELECT state FROM studies WHERE id=?", (study_id,)).fetchone()[0])
        if state not in (StudyState.DELIVERING, StudyState.DELIVERED, StudyState.UNDELIVERABLE):
            return None
        items = cur.execute(
            "SELECT o.state, o.last_status FROM outbox o JOIN results r ON r.id=o.result_id"
            " WHERE r.study_id=? AND r.superseded=0 AND o.action='store'", (study_id,)).fetchall()
        pending_deletes = cur.execute(
            "SELECT COUNT(*) FROM outbox o JOIN results r ON r.id=o.result_id WHERE r.study_id=? AND o.state=?",
            (study_id, OutboxState.PENDING.value)).fetchone()[0]
        new_state = study_state_from_outbox([OutboxState(i[0]) for i in items])
        if new_state == StudyState.DELIVERED and pending_deletes:
            new_state = StudyState.DELIVERING
        reason = ""
        if new_state == StudyState.UNDELIVERABLE:
            dead = [i[1] for i in items if i[0] == OutboxState.DEAD.value]
            reason = f"{len(dead)} object(s) dead-lettered; last: {dead[-1]}"
        if new_state != state or new_state == StudyState.DELIVERED:
            cur.execute(
                "UPDATE studies SET state=?, reason=CASE WHEN ?='' THEN reason ELSE ? END,"
                " delivered_at=CASE WHEN ?=? THEN COALESCE(delivered_at, ?) ELSE NULL END, updated_at=? WHERE id=?",
                (new_state.value, reason, reason, new_state.value, StudyState.DELIVERED.value, now, now, study_id))
        return new_state

    def destinations_with_pending(self) -> set[str]:
        """Names of destinations that have pending items."""
        return {r[0] for r in self._read("SELECT DISTINCT destination FROM outbox WHERE state=?",
                                         (OutboxState.PENDING.value,))}

    # ----------------------------------------------------------------------------------------
    # operator actions and reports

    def resolve_study(self, key: str) -> tuple[int, str]:
        """(id, UID) of the study named by its number or UID."""
        rows = self._read("SELECT id, study_uid FROM studies WHERE study_uid=?", (key,))
        if not rows and key.isdigit():
            rows = self._read("SELECT id, study_uid FROM studies WHERE id=?", (int(key),))
        if not rows:
            raise StudyNotFound(f"no study {key!r}")
        return rows[0]

    def requeue(self, key: str) -> str:
        """Process the study again from scratch (attempts reset). Returns its UID."""
        study_id, uid = self.resolve_study(key)
        now = time.time()
        with self._write() as cur:
            state = StudyState(cur.execute("SELECT state FROM studies WHERE id=?", (study_id,)).fetchone()[0])
            if state == StudyState.PROCESSING:
                raise ValueError(f"study {study_id} is being processed now; requeue it afterwards")
            if not can_transition(state, StudyState.READY):
                raise ValueError(f"study {study_id} is {state.value}; it cannot be requeued")
            cur.execute(
                "UPDATE studies SET state=?, attempts=0, next_attempt_at=?, ready_at=?, reason='requeued by operator',"
                " updated_at=? WHERE id=?", (StudyState.READY.value, now, now, now, study_id))
        return uid

    def resend(self, key: str) -> tuple[str, int]:
        """Send the study's current results again to every destination. Returns (UID, items)."""
        study_id, uid = self.resolve_study(key)
        now = time.time()
        with self._write() as cur:
            state = StudyState(cur.execute("SELECT state FROM studies WHERE id=?", (study_id,)).fetchone()[0])
            if state not in (StudyState.DELIVERING, StudyState.DELIVERED, StudyState.UNDELIVERABLE):
                raise ValueError(f"study {study_id} is {state.value}; it has no results to resend")
            count = cur.execute(
                "UPDATE outbox SET state=?, attempts=0, next_attempt_at=?, sent_at=NULL WHERE action='store' AND"
                " result_id IN (SELECT id FROM results WHERE study_id=? AND superseded=0)",
                (OutboxState.PENDING.value, now, study_id)).rowcount
            cur.execute("UPDATE studies SET state=?, delivered_at=NULL, reason='resend requested', updated_at=?"
                        " WHERE id=?", (StudyState.DELIVERING.value, now, study_id))
        return uid, count

    def study_rows(self) -> list[StudyRow]:
        """Every study with counts, newest first."""
        rows = self._read(
            "SELECT s.id, s.study_uid, s.state, s.generation, s.attempts, s.reason, s.updated_at,"
            " (SELECT COUNT(*) FROM instances i WHERE i.study_id=s.id),"
            " (SELECT COUNT(*) FROM series x WHERE x.study_id=s.id) FROM studies s ORDER BY s.id DESC")
        out = []
        for r in rows:
            outbox = dict(self._read(
                "SELECT o.state, COUNT(*) FROM outbox o JOIN results r ON r.id=o.result_id"
                " WHERE r.study_id=? AND r.superseded=0 GROUP BY o.state", (r[0],)))
            out.append(StudyRow(r[0], r[1], r[2], r[3], r[4], r[7], r[8], r[5], r[6], outbox))
        return out

    def study_state(self, key: str) -> StudyState:
        """The state of one study."""
        study_id, _ = self.resolve_study(key)
        return StudyState(self._read("SELECT state FROM studies WHERE id=?", (study_id,))[0][0])

    def study_times(self, key: str) -> dict[str, float | None]:
        """Timestamps of one study (for benchmarks and reports)."""
        study_id, _ = self.resolve_study(key)
        r = self._read("SELECT first_received_at, last_received_at, ready_at, processed_at, delivered_at"
                       " FROM studies WHERE id=?", (study_id,))[0]
        return dict(zip(("first_received", "last_received", "ready", "processed", "delivered"), r))

    def attempts_of(self, key: str) -> list[tuple[int, int, str, str]]:
        """(generation, number, outcome, message) of every attempt of one study."""
        study_id, _ = self.resolve_study(key)
        return self._read("SELECT generation, number, outcome, message FROM attempts WHERE study_id=? ORDER BY id",
                          (study_id,))

    def outbox_of(self, key: str) -> list[tuple[str, str, str, str, int]]:
        """(destination, action, state, last status, attempts) of a study's outbox items."""
        study_id, _ = self.resolve_study(key)
        return self._read(
            "SELECT o.destination, o.action, o.state, o.last_status, o.attempts FROM outbox o"
            " JOIN results r ON r.id=o.result_id WHERE r.study_id=? ORDER BY o.id", (study_id,))

    def state_counts(self) -> dict[str, int]:
        """Number of studies per state."""
        return dict(self._read("SELECT state, COUNT(*) FROM studies GROUP BY state"))

    def outbox_counts(self) -> dict[str, int]:
        """Number of outbox items per state."""
        return dict(self._read("SELECT state, COUNT(*) FROM outbox GROUP BY state"))

    def conflict_count(self) -> int:
        """Instances received again with other bytes."""
        return self._read("SELECT COUNT(*) FROM conflicts")[0][0]
