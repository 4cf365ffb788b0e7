"""The node against real peers: DCMTK storescu/echoscu/storescp and a real Orthanc.

Node mechanics are tested with `fault_processors.ReportProcessor` standing in for the model (it
writes a real DICOM SR with deterministic UIDs and can crash, hang or exhaust memory on request);
`test_real_pipeline_end_to_end` uses the real `node.processing.StudyProcessor`.
Every fault test ends with `check_spool_integrity`: every acknowledged instance is on disk and in
the index, and nothing is half-written.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from tests.integration.peers import (
    NodeConfig,
    NodeProcess,
    acknowledged_count,
    check_spool_integrity,
    dcmtk_env,
    free_port,
    require_dcmtk,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.peer


def _cstore(scp) -> dict:
    return {"kind": "cstore", "name": "pacs", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}


def _orthanc(orthanc) -> dict:
    return {"kind": "orthanc", "name": "orthanc", "url": orthanc.url}


@pytest.fixture
def node_factory(tmp_path: Path):
    nodes: list[NodeProcess] = []

    def make(destinations: list[dict], **options) -> NodeProcess:
        folder = tmp_path / f"node{len(nodes)}"
        config = NodeConfig(data_dir=folder / "data", destinations=destinations, **options)
        node = NodeProcess(config, folder)
        node.env["LIVERNODE_TEST_RUNLOG"] = str(folder / "runs.log")
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


def _runs(node: NodeProcess) -> list[str]:
    path = Path(node.env["LIVERNODE_TEST_RUNLOG"])
    return path.read_text().splitlines() if path.exists() else []


def _state(node: NodeProcess, study_uid: str, wanted: str):
    return lambda: node.study_state(study_uid) == wanted


# ------------------------------------------------------------------------------------------------


def test_echo_works_and_unknown_calling_ae_is_rejected(node_factory) -> None:
    require_dcmtk()
    node = node_factory([])
    ok = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)],
                        capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)],
                         capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr
    wrong_called = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "SOMEONE", "127.0.0.1",
                                   str(node.dicom_port)], capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    assert "Called AE Title Not Recognized" in wrong_called.stderr


def test_study_results_arrive_in_orthanc_and_storescp(node_factory, study_factory, orthanc, storescp) -> None:
    study = study_factory(11)
    node = node_factory([_cstore(storescp), _orthanc(orthanc)])
    sent = storescu(node.dicom_port, study.files)
    assert acknowledged_count(sent.stderr) == len(study.files), sent.stderr[-2000:]
    wait_for(_state(node, study.study_uid, "delivered"), 60, "the study to be delivered")
    in_orthanc = orthanc.result_sop_instance_uids(study.study_uid)
    in_storescp = storescp.received_sop_instance_uids()
    assert len(in_orthanc) == 1 and in_storescp == in_orthanc
    check_spool_integrity(node.config.data_dir, study.sop_instance_uids)
    # the CLI and the HTTP endpoint report it; the log never names the patient
    status = node.cli("status")
    assert status.returncode == 0 and "delivered" in status.stdout and study.study_uid in status.stdout
    code, health = node.http_get("/health")
    assert code == 200 and '"status": "ok"' in health
    code, metrics = node.http_get("/metrics")
    assert f'livernode_instances_received_total{{outcome="stored"}} {len(study.files)}' in metrics
    assert 'livernode_studies{state="delivered"} 1' in metrics
    node.stop()
    log_text = node.log_path.read_text()
    assert study.study_uid in log_text
    for identifier in (study.patient_name, study.patient_id, study.patient_name.replace("^", " ")):
        assert identifier not in log_text
    # resend: the same objects (same UIDs) again, once per destination
    resent = node.cli("resend", study.study_uid)
    assert resent.returncode == 0, resent.stderr
    node.start()
    wait_for(lambda: len(storescp.received_sop_instance_uids()) == 2, 30, "the resend to arrive")
    assert set(storescp.received_sop_instance_uids()) == set(in_orthanc)
    assert orthanc.result_sop_instance_uids(study.study_uid) == in_orthanc


def test_real_pipeline_end_to_end(node_factory, study_factory, orthanc, storescp) -> None:
    """storescu sends a 4-phase phantom; the real processor's SEG and SR reach Orthanc and storescp."""
    from pipeline.model import BUNDLED_MODEL_DIR, MODEL_CARD_NAME

    if not (BUNDLED_MODEL_DIR / MODEL_CARD_NAME).is_file():
        pytest.skip(f"the bundled model is not there yet ({BUNDLED_MODEL_DIR}/{MODEL_CARD_NAME})")
    study = study_factory(12, slices=24)
    node = node_factory([_cstore(storescp), _orthanc(orthanc)], processor_factory="node.processing:StudyProcessor",
                        timeout_s=600)
    sent = storescu(node.dicom_port, study.files)
    assert acknowledged_count(sent.stderr) == len(study.files)
    wait_for(lambda: node.study_state(study.study_uid) in ("delivered", "quarantined", "undeliverable"), 500,
             "the study to be processed and delivered")
    assert node.study_state(study.study_uid) == "delivered", node.cli("status").stdout
    modalities = {}
    for path in storescp.folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study.study_uid
        modalities.setdefault(str(ds.Modality), []).append(str(ds.SOPInstanceUID))
    assert "SEG" in modalities and "SR" in modalities, modalities
    in_orthanc = set(orthanc.result_sop_instance_uids(study.study_uid))
    assert in_orthanc == {uid for uids in modalities.values() for uid in uids}


def test_kill_during_receive_then_restart(node_factory, study_factory, storescp) -> None:
    study = study_factory(13, slices=60)
    node = node_factory([_cstore(storescp)])
    sender = subprocess.Popen(
        ["storescu", "-v", "-aet", "STORESCU", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port),
         *[str(f) for f in study.files]], env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def indexed() -> int:
        db = node.database()
        try:
            return len(db.instance_uids())
        finally:
            db.close()

    wait_for(lambda: indexed() >= 30, 60, "30 instances to be received", interval_s=0.02)
    node.kill()
    output = sender.communicate(timeout=60)[0]
    acknowledged = acknowledged_count(output)
    # the last indexed instance may not have been answered yet: indexed >= acknowledged
    assert 20 <= acknowledged < len(study.files), "the kill should land mid-study"
    # storescu sends in command-line order and waits for each response
    acknowledged_uids = study.sop_instance_uids[:acknowledged]
    node.start()
    check_spool_integrity(node.config.data_dir, acknowledged_uids)
    sent = storescu(node.dicom_port, study.files)  # the modality sends the study again
    assert acknowledged_count(sent.stderr) == len(study.files)
    wait_for(_state(node, study.study_uid, "delivered"), 60, "the study to be delivered")
    check_spool_integrity(node.config.data_dir, study.sop_instance_uids)
    assert len(storescp.received_sop_instance_uids()) == 1, "results must arrive once"
    assert len(_runs(node)) == 1


def test_kill_during_processing_then_restart(node_factory, study_factory, storescp) -> None:
    study = study_factory(14, marker="SLOW")
    node = node_factory([_cstore(storescp)])
    sent = storescu(node.dicom_port, study.files)
    assert acknowledged_count(sent.stderr) == len(study.files)
    wait_for(lambda: _runs(node), 30, "processing to start")
    worker_pid = int(_runs(node)[0].split("pid=")[1].split()[0])
    node.kill()
    wait_for(lambda: not _pid_alive(worker_pid), 10, "the orphaned worker to die with the node")
    node.start()
    wait_for(_state(node, study.study_uid, "delivered"), 60, "the study to be delivered after restart")
    check_spool_integrity(node.config.data_dir, study.sop_instance_uids)
    assert len(storescp.received_sop_instance_uids()) == 1, "results must arrive once"
    db = node.database()
    outcomes = [a[2] for a in db.attempts_of(study.study_uid)]
    db.close()
    assert outcomes == ["interrupted", "succeeded"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_destination_down_then_up(node_factory, study_factory, tmp_path) -> None:
    from tests.integration.peers import StoreSCP

    port = free_port()
    pacs = StoreSCP(tmp_path / "late-pacs", port=port)
    study = study_factory(15)
    node = node_factory([{"kind": "cstore", "name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": port}])
    sent = storescu(node.dicom_port, study.files)
    assert acknowledged_count(sent.stderr) == len(study.files)

    def tried_twice() -> bool:
        db = node.database()
        try:
            items = db.outbox_of(study.study_uid)
        finally:
            db.close()
        return bool(items) and items[0][4] >= 2 and items[0][2] == "pending"

    wait_for(tried_twice, 60, "two failed delivery attempts")
    assert node.study_state(study.study_uid) == "delivering"
    pacs.start()
    try:
        wait_for(_state(node, study.study_uid, "delivered"), 30, "delivery once the PACS is up")
        assert len(pacs.received_sop_instance_uids()) == 1
    finally:
        pacs.stop()
    check_spool_integrity(node.config.data_dir, study.sop_instance_uids)


def test_failing_studies_are_quarantined_and_the_queue_flows(node_factory, study_factory, storescp) -> None:
    crash = study_factory(16, marker="CRASH")
    hang = study_factory(17, marker="SLEEP")
    hog = study_factory(18, marker="MEMORY")
    good = study_factory(19)
    # 15 s: the memory hog must hit its limit within the timeout even on a loaded machine (at 3 s,
    # and once at 8 s, in session 25's CI, it timed out instead; why it took that long is not
    # known: the timeout starts after the worker is ready); the sleeping study still times out
    node = node_factory([_cstore(storescp)], max_attempts=2, timeout_s=15,
                        extra={"worker": {"memory_limit_mb": 1500}})
    for study in (crash, hang, hog, good):
        sent = storescu(node.dicom_port, study.files)
        assert acknowledged_count(sent.stderr) == len(study.files)
    wait_for(_state(node, good.study_uid, "delivered"), 180, "the good study to be delivered")
    for study, why in ((crash, "crash"), (hang, "timeout"), (hog, "out of memory")):
        wait_for(_state(node, study.study_uid, "quarantined"), 180, f"the {why} study to be quarantined")
        db = node.database()
        row = next(r for r in db.study_rows() if r.study_uid == study.study_uid)
        db.close()
        assert row.attempts == 2 and why in row.reason, (why, row.attempts, row.reason, db_attempts(node, study))
    assert len(storescp.received_sop_instance_uids()) == 1
    code, _ = node.http_get("/health")
    assert code == 200
    echo = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    assert echo.returncode == 0
    # an operator can requeue a quarantined study (it fails again here, and is quarantined again)
    assert node.cli("requeue", crash.study_uid).returncode == 0
    wait_for(lambda: node.study_state(crash.study_uid) in ("processing", "failed"), 30, "the requeue")
    for study in (crash, hang, hog, good):
        check_spool_integrity(node.config.data_dir, study.sop_instance_uids)


def _send_file(port: int, path: Path) -> int:
    """Send one file with pynetdicom as SCU (file meta decides the command's UIDs; bytes sent as-is)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, not a decoded re-encoding
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="LIVERNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(str(path))
    finally:
        assoc.release()
    return int(status.Status)


def test_bad_instances_get_clear_statuses(node_factory, study_factory, tmp_path) -> None:
    study = study_factory(20)
    node = node_factory([])
    source = study.files[0]
    raw = source.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) - 1000])
    assert _send_file(node.dicom_port, truncated) == 0xC210

    mismatched = tmp_path / "mismatched.dcm"
    ds = pydicom.dcmread(source)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # the command will say this
    ds.save_as(mismatched, enforce_file_format=False)  # keep the file meta as set
    assert pydicom.filereader.read_file_meta_info(mismatched).MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    assert _send_file(node.dicom_port, mismatched) == 0xC211

    secondary = tmp_path / "secondary.dcm"
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(secondary, enforce_file_format=True)
    sent = storescu(node.dicom_port, [secondary])
    assert "Refused: SOPClassNotSupported" in sent.stderr or "0x0122" in sent.stderr, sent.stderr[-1500:]

    # a good instance still goes through; none of the bad ones was stored
    assert _send_file(node.dicom_port, source) == 0x0000
    db = node.database()
    assert db.instance_uids() == {study.sop_instance_uids[0]}
    db.close()
    check_spool_integrity(node.config.data_dir, study.sop_instance_uids[:1])


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_nearly_full_spool_answers_out_of_resources_and_recovers(node_factory, study_factory, tmp_path,
                                                                 storescp) -> None:
    import shutil

    study = study_factory(21)  # 48 files of ~35 kB
    volume = tmp_path / "small-fs"
    mounted = _mount_tmpfs(volume, 20)
    if not mounted:
        volume.mkdir(parents=True, exist_ok=True)
    try:
        reserve_mb = 4.0
        filler = volume / "filler.bin"
        if mounted:
            free = shutil.disk_usage(volume).free
            # leave room for the database and ~20 instances above the reserve
            filler.write_bytes(b"\0" * int(free - reserve_mb * 2**20 - 1.6 * 2**20))
        else:  # no tmpfs: a reserve just above the real free space plays the full disk
            reserve_mb = shutil.disk_usage(volume).free / 2**20 + 1.0
        folder = tmp_path / "node-fs"
        config = NodeConfig(data_dir=volume / "data", destinations=[_cstore(storescp)],
                            free_space_reserve_mb=reserve_mb)
        node = NodeProcess(config, folder)
        node.start()
        try:
            sent = storescu(node.dicom_port, study.files)  # storescu halts at the first refusal
            acknowledged = acknowledged_count(sent.stderr)
            assert acknowledged < len(study.files)
            assert "Refused: OutOfResources" in sent.stderr or "0xa700" in sent.stderr.lower(), sent.stderr[-1500:]
            check_spool_integrity(config.data_dir, study.sop_instance_uids[:acknowledged])
            # space frees: the modality sends again and everything is taken
            if mounted:
                filler.unlink()
            else:
                node.stop()
                node.config.free_space_reserve_mb = 0.0
                node.start()
            sent = storescu(node.dicom_port, study.files)
            assert acknowledged_count(sent.stderr) == len(study.files), sent.stderr[-1500:]
            wait_for(_state(node, study.study_uid, "delivered"), 60, "delivery after space freed")
            check_spool_integrity(config.data_dir, study.sop_instance_uids)
        finally:
            node.stop()
    finally:
        if mounted:
            subprocess.run(["umount", str(volume)], check=False)


def db_attempts(node: NodeProcess, study) -> list:
    """Every attempt of a study, for failure messages."""
    db = node.database()
    try:
        return db.attempts_of(study.study_uid)
    finally:
        db.close()


def test_late_series_reprocesses_and_supersedes(node_factory, study_factory, orthanc, storescp) -> None:
    study = study_factory(22)
    late = [f for f in study.files if f.parent.name == "DP"]
    early = [f for f in study.files if f.parent.name != "DP"]
    node = node_factory([_cstore(storescp), _orthanc(orthanc)])
    assert acknowledged_count(storescu(node.dicom_port, early).stderr) == len(early)
    wait_for(_state(node, study.study_uid, "delivered"), 60, "the first results")
    first = orthanc.result_sop_instance_uids(study.study_uid, ("SR",))
    assert len(first) == 1
    assert acknowledged_count(storescu(node.dicom_port, late).stderr) == len(late)
    wait_for(lambda: node.study_state(study.study_uid) == "delivered"
             and orthanc.result_sop_instance_uids(study.study_uid, ("SR",)) != first, 60, "the new results")
    second = orthanc.result_sop_instance_uids(study.study_uid, ("SR",))
    assert len(second) == 1 and second != first, "the superseded SR is deleted from Orthanc"
    assert storescp.received_sop_instance_uids() == [*first, *second] or \
        sorted(storescp.received_sop_instance_uids()) == sorted([*first, *second])
    db = node.database()
    assert [a[:3] for a in db.attempts_of(study.study_uid)] == [(1, 1, "succeeded"), (2, 1, "succeeded")]
    db.close()
