"""The spool and the SQLite queue: durable writes, duplicates, conflicts, the free-space reserve,
the study lifecycle with attempts recorded before running, supersession and the outboxes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.database import Database, StudyNotFound
from node.lifecycle import StudyState
from node.records import InstanceMeta, ResultFile, SendResult, StoreOutcome
from node.spool import OutOfSpace, Spool

BACKOFF = (0.0, 2.0, 10.0)


def _meta(sop: str, series: str = "1.2.3.1", study: str = "1.2.3", description: str = "portal venous") -> InstanceMeta:
    return InstanceMeta(study, series, sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT",
                        description, None, None, True)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    db = Database(tmp_path / "index.sqlite3")
    yield Spool(tmp_path, db, free_space_reserve_mb=0)
    db.close()


def _store(spool: Spool, meta: InstanceMeta, body: bytes = b"data set bytes"):
    return spool.store(meta, (b"HEADER", body), body)


def test_store_writes_the_bytes_under_our_own_names(spool: Spool, tmp_path: Path) -> None:
    meta = _meta("1.2.3.1.1", study="../../evil")
    stored = _store(spool, meta)
    assert stored.outcome == StoreOutcome.STORED
    assert (tmp_path / stored.rel_path).read_bytes() == b"HEADERdata set bytes"
    assert re.fullmatch(r"spool/studies/[0-9a-f]{32}/[0-9a-f]{32}/[0-9a-f]{32}\.dcm", stored.rel_path)
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_duplicate_is_one_copy_and_conflict_keeps_the_first(spool: Spool, tmp_path: Path) -> None:
    first = _store(spool, _meta("1.2.3.1.1"))
    again = _store(spool, _meta("1.2.3.1.1"))
    assert again.outcome == StoreOutcome.DUPLICATE and again.rel_path == first.rel_path
    other = _store(spool, _meta("1.2.3.1.1"), b"other bytes")
    assert other.outcome == StoreOutcome.CONFLICT and "conflicts" in other.rel_path
    assert (tmp_path / first.rel_path).read_bytes().endswith(b"data set bytes")
    assert spool.database.conflict_count() == 1
    assert len(spool.database.indexed_paths()) == 1


def test_unindexed_file_from_an_interrupted_receive_is_adopted(spool: Spool, tmp_path: Path) -> None:
    stored = _store(spool, _meta("1.2.3.1.1"))
    db = spool.database
    with db._write() as cur:  # simulate a crash between the rename and the index
        cur.execute("DELETE FROM instances")
    again = _store(spool, _meta("1.2.3.1.1"))
    assert again.outcome == StoreOutcome.STORED and again.rel_path == stored.rel_path


def test_reserve_refuses_before_the_disk_is_full(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite3")
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    spool = Spool(tmp_path, db, free_space_reserve_mb=free_mb + 10)
    with pytest.raises(OutOfSpace):
        _store(spool, _meta("1.2.3.1.1"))
    assert db.indexed_paths() == [] and list((tmp_path / "spool" / "tmp").iterdir()) == []
    db.close()


def test_partial_files_are_removed_at_start(spool: Spool, tmp_path: Path) -> None:
    (tmp_path / "spool" / "tmp" / "x.part").write_bytes(b"half")
    assert spool.remove_partial_files() == 1


def _ready_study(spool: Spool, tmp_path: Path) -> int:
    _store(spool, _meta("1.2.3.1.1"))
    snapshot = spool.database.receiving_studies()[0]
    assert spool.database.mark_ready(snapshot.study_id, snapshot.generation, "test")
    return snapshot.study_id


def test_attempt_is_recorded_before_running_and_quarantine_after_k(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    states = []
    for attempt in (1, 2, 3):
        job = db.start_next_job(tmp_path, now=1e12)
        assert job is not None and job.attempt == attempt and len(job.input_paths) == 1
        assert db.study_state("1.2.3") == StudyState.PROCESSING
        states.append(db.finish_failure(job, "crash: boom", 3, BACKOFF))
    assert states == [StudyState.FAILED, StudyState.FAILED, StudyState.QUARANTINED]
    assert db.start_next_job(tmp_path, now=1e12) is None
    row = db.study_rows()[0]
    assert row.reason == "crash: boom" and row.attempts == 3


def test_restart_requeues_an_interrupted_study(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    db.start_next_job(tmp_path)
    assert db.recover_interrupted(max_attempts=3) == ["1.2.3"]
    assert db.study_state("1.2.3") == StudyState.READY
    assert [a[2] for a in db.attempts_of("1.2.3")] == ["interrupted"]
    job = db.start_next_job(tmp_path)
    assert job.attempt == 2


def _result(tmp_path: Path, name: str, uid: str) -> ResultFile:
    path = tmp_path / "work" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return ResultFile(path, "1.2.840.10008.5.1.4.1.1.88.34", uid, "9.9")


def test_results_fill_the_outbox_and_delivery_completes(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    job = db.start_next_job(tmp_path)
    assert db.finish_success(job, [_result(tmp_path, "sr.dcm", "9.9.1")], ["a", "b"], tmp_path, "ok")
    assert db.study_state("1.2.3") == StudyState.DELIVERING
    items = db.due_outbox("a") + db.due_outbox("b")
    assert len(items) == 2
    db.record_sends([SendResult(items[0].item_id, True, "0x0000")], 3, BACKOFF)
    assert db.study_state("1.2.3") == StudyState.DELIVERING
    db.record_sends([SendResult(items[1].item_id, False, "refused 0xA900", transient=False)], 3, BACKOFF)
    assert db.study_state("1.2.3") == StudyState.UNDELIVERABLE
    uid, count = db.resend("1.2.3")
    assert count == 2 and db.study_state("1.2.3") == StudyState.DELIVERING
    db.record_sends([SendResult(i.item_id, True, "0x0000") for i in db.due_outbox("a") + db.due_outbox("b")],
                    3, BACKOFF)
    assert db.study_state("1.2.3") == StudyState.DELIVERED


def test_transient_failures_back_off_then_dead_letter(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    job = db.start_next_job(tmp_path)
    db.finish_success(job, [_result(tmp_path, "sr.dcm", "9.9.1")], ["a"], tmp_path, "ok")
    for _ in range(3):
        (item,) = db.due_outbox("a", now=1e12)
        db.record_sends([SendResult(item.item_id, False, "connection refused")], 3, (5.0, 2.0, 60.0))
        assert db.due_outbox("a") == []  # backing off
    assert db.study_state("1.2.3") == StudyState.UNDELIVERABLE
    assert db.outbox_of("1.2.3")[0][2:] == ("dead", "connection refused", 3)


def test_new_series_after_processing_supersedes_the_first_results(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    job1 = db.start_next_job(tmp_path)
    db.finish_success(job1, [_result(tmp_path, "g1.dcm", "9.9.1")], ["a", "orthanc"], tmp_path, "ok")
    for item in db.due_outbox("a") + db.due_outbox("orthanc"):
        db.record_sends([SendResult(item.item_id, True, "ok")], 3, BACKOFF)
    assert db.study_state("1.2.3") == StudyState.DELIVERED
    # a late series arrives
    _store(spool, _meta("1.2.3.2.1", series="1.2.3.2", description="delayed"))
    assert db.study_state("1.2.3") == StudyState.RECEIVING
    snapshot = db.receiving_studies()[0]
    assert snapshot.generation == 2 and len(snapshot.series) == 2
    db.mark_ready(snapshot.study_id, 2, "test")
    job2 = db.start_next_job(tmp_path)
    assert job2.generation == 2 and job2.attempt == 1 and len(job2.input_paths) == 2
    db.finish_success(job2, [_result(tmp_path, "g2.dcm", "9.9.2")], ["a", "orthanc"], tmp_path, "ok",
                      delete_superseded=["orthanc"])
    due = db.due_outbox("orthanc")
    assert sorted((i.action, i.sop_instance_uid) for i in due) == [("delete", "9.9.1"), ("store", "9.9.2")]
    assert [(i.action, i.sop_instance_uid) for i in db.due_outbox("a")] == [("store", "9.9.2")]


def test_results_of_a_study_that_moved_on_are_not_delivered(spool: Spool, tmp_path: Path) -> None:
    db = spool.database
    _ready_study(spool, tmp_path)
    job = db.start_next_job(tmp_path)
    _store(spool, _meta("1.2.3.2.1", series="1.2.3.2"))  # arrives during processing
    assert not db.finish_success(job, [_result(tmp_path, "g1.dcm", "9.9.1")], ["a"], tmp_path, "ok")
    assert db.due_outbox("a") == [] and db.study_state("1.2.3") == StudyState.RECEIVING


def test_operator_actions_name_unknown_studies(spool: Spool) -> None:
    with pytest.raises(StudyNotFound):
        spool.database.requeue("1.9.9")
