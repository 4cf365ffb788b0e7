"""livernode inside a real Orthanc: the Python plugin (deploy/orthanc/livernode_plugin.py).

Orthanc (Debian packages) runs on free loopback ports with authentication on and the plugin; DCMTK
storescu sends 4-phase phantom studies to it; the results must appear in the same Orthanc study
(REST and DICOMweb) and, forwarded by the node's outbox, at a DCMTK storescp registered as one of
Orthanc's modalities. Node mechanics use `fault_processors.ReportProcessor` (a real DICOM SR, no
model); `test_real_processor_inside_orthanc` uses the real `node.processing.StudyProcessor`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pipeline.phantom import write_phantom_study
from tests.integration.orthanc_plugin_peer import PACED_PROCESSOR, PluginOrthanc
from tests.integration.peers import (
    REPO,
    NodeConfig,
    NodeProcess,
    StoreSCP,
    acknowledged_count,
    check_spool_integrity,
    storescu,
    wait_for,
)
from tests.integration.studies import Study

pytestmark = pytest.mark.peer

SLICES = 24
BUNDLED_MODEL_CARD = REPO / "pipeline" / "models" / "phantom-demo" / "model_card.json"
FINAL = ("delivered", "quarantined", "undeliverable")


def _plugin_node(data_dir: Path, **options) -> NodeConfig:
    """The node's configuration inside Orthanc: no destinations of its own (the plugin adds this
    Orthanc and the forwarded modality), no health port."""
    return NodeConfig(data_dir=data_dir, destinations=[], extra={"http": {"enabled": False}}, **options)


def _runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """DCMTK storescp: the modality Orthanc forwards results to."""
    peer = StoreSCP(tmp_path_factory.mktemp("pacs") / "received").start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def plugin_orthanc(tmp_path_factory: pytest.TempPathFactory, pacs: StoreSCP) -> Iterator[PluginOrthanc]:
    """Orthanc with the plugin running the node inside it; forwards results to `pacs`."""
    folder = tmp_path_factory.mktemp("plugin-orthanc")
    peer = PluginOrthanc(
        folder, _plugin_node(folder / "livernode-data", processor_factory=PACED_PROCESSOR),
        plugin={"MinSeries": 2, "ForwardToModalities": ["pacs"]},
        modalities={"pacs": [pacs.ae_title, "127.0.0.1", pacs.port]},
        env={"LIVERNODE_TEST_RUNLOG": str(folder / "runs.log"), "LIVERNODE_TEST_STARTLOG": str(folder / "starts.log")},
    )
    peer.start()
    yield peer
    peer.stop()


def _send(orthanc: PluginOrthanc, study: Study) -> None:
    sent = storescu(orthanc.dicom_port, study.files, called_ae="ORTHANC")
    assert acknowledged_count(sent.stderr) == len(study.files), sent.stderr[-2000:]


def _wait_final(orthanc: PluginOrthanc, study_uid: str, timeout_s: float = 90) -> str:
    wait_for(lambda: orthanc.node_state(study_uid) in FINAL, timeout_s, "the study to be processed and delivered",
             interval_s=0.3)
    return orthanc.node_state(study_uid)


def _forwarded(pacs: StoreSCP, study_uid: str) -> list[str]:
    """SOP Instance UIDs storescp received for one study (one entry per arrival)."""
    out = []
    for path in sorted(pacs.folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.StudyInstanceUID) == study_uid:
            out.append(str(ds.SOPInstanceUID))
    return out


def _runlog(orthanc: PluginOrthanc) -> Path:
    return Path(orthanc.env["LIVERNODE_TEST_RUNLOG"])


# ------------------------------------------------------------------------------------------------


def test_study_results_land_in_the_same_orthanc_study(plugin_orthanc, pacs, study_factory) -> None:
    """storescu -> Orthanc -> plugin -> node -> SR back in the same Orthanc study, in DICOMweb, and
    forwarded to Orthanc's modality; the route and the log name no patient."""
    orthanc = plugin_orthanc
    study = study_factory(21, slices=SLICES)
    _send(orthanc, study)
    assert _wait_final(orthanc, study.study_uid) == "delivered", json.dumps(orthanc.livernode_studies())[-3000:]
    results = orthanc.result_sop_instance_uids(study.study_uid)
    assert len(results) == 1, results
    # the result is a child of the very study Orthanc received (not a new study)
    orthanc_study = orthanc.client().studies.lookup(study.study_uid)
    assert orthanc_study is not None and len(orthanc.get(f"/studies/{orthanc_study}")[1]["Series"]) == 5
    wait_for(lambda: _forwarded(pacs, study.study_uid) == results, 30, "the result to be forwarded to the modality")
    # DICOMweb (for viewers) lists the SR series too
    if "dicom-web" in orthanc.get("/plugins")[1]:
        code, series = orthanc.get(f"/dicom-web/studies/{study.study_uid}/series")
        assert code == 200 and "SR" in {s["00080060"]["Value"][0] for s in series}
    # the node's view: every instance taken once, the spool intact, states visible over REST
    report = orthanc.livernode_studies()
    [row] = [s for s in report["studies"] if s["study_uid"] == study.study_uid]
    assert row["instances"] == len(study.files) and row["series"] == 4 and row["attempts"] == 1
    assert row["orthanc_id"] == orthanc_study and row["outbox"] == {"sent": 2}  # this Orthanc + the modality
    check_spool_integrity(orthanc.node.data_dir, study.sop_instance_uids)
    # the SR's arrival makes the study stable again: taken as "unchanged", not processed twice
    wait_for(lambda: any(r["decision"] == "unchanged" and r["study_uid"] == study.study_uid
                         for r in orthanc.livernode_studies()["intake"]), 30, "the second stable event")
    assert len([r for r in _runs(_runlog(orthanc)) if r.startswith(study.study_uid)]) == 1
    # no patient name or ID in the route's answer or in the plugin's log lines
    route = json.dumps(report)
    lines = "\n".join(orthanc.plugin_log_lines())
    assert study.study_uid in lines
    for identifier in (study.patient_name, study.patient_id, study.patient_name.replace("^", " ")):
        assert identifier not in route and identifier not in lines
    # the route needs authentication like the rest of Orthanc's API
    assert orthanc.get("/livernode/studies", ok_only=False, auth=None)[0] == 401


def test_second_study_sent_while_the_first_is_processing(plugin_orthanc, study_factory) -> None:
    orthanc = plugin_orthanc
    slow = study_factory(22, marker="SLOW", slices=SLICES)  # 12 s in PacedReportProcessor
    other = study_factory(23, slices=SLICES)
    _send(orthanc, slow)
    wait_for(lambda: orthanc.node_state(slow.study_uid) == "processing", 60, "the first study to be processing",
             interval_s=0.1)
    _send(orthanc, other)
    assert orthanc.node_state(slow.study_uid) == "processing"  # still busy while the second arrived
    assert _wait_final(orthanc, slow.study_uid) == "delivered"
    assert _wait_final(orthanc, other.study_uid) == "delivered"
    assert len(orthanc.result_sop_instance_uids(slow.study_uid)) == 1
    assert len(orthanc.result_sop_instance_uids(other.study_uid)) == 1
    runs = [r.split()[0] for r in _runs(_runlog(orthanc))]
    assert runs.count(slow.study_uid) == 1 and runs.count(other.study_uid) == 1
    assert runs.index(slow.study_uid) < runs.index(other.study_uid)


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_orthanc_restarted_mid_processing_still_ends_with_results_once(plugin_orthanc, pacs, study_factory,
                                                                       how: str) -> None:
    """Orthanc stops (SIGTERM, or SIGKILL) while the worker runs a study; after the restart the
    study is processed again and its result is in Orthanc, and at the modality, exactly once."""
    orthanc = plugin_orthanc
    study = study_factory(24 if how == "restart" else 25, marker="SLOW", slices=SLICES)
    _send(orthanc, study)
    start_log = Path(orthanc.env["LIVERNODE_TEST_STARTLOG"])
    # "processing" is recorded before the worker's processor starts: wait for the processor itself,
    # so the stop always interrupts a running study (else the first start may never be logged)
    wait_for(lambda: orthanc.node_state(study.study_uid) == "processing"
             and study.study_uid in [r.split()[0] for r in _runs(start_log)], 60,
             "the study's processor to be running", interval_s=0.1)
    if how == "restart":
        orthanc.stop()
    else:
        orthanc.kill()
    orthanc.start()
    assert _wait_final(orthanc, study.study_uid) == "delivered"
    results = orthanc.result_sop_instance_uids(study.study_uid)
    assert len(results) == 1
    wait_for(lambda: _forwarded(pacs, study.study_uid) == results, 30, "the result at the modality")
    [row] = [s for s in orthanc.livernode_studies()["studies"] if s["study_uid"] == study.study_uid]
    assert row["attempts"] == 2 and row["outbox"] == {"sent": 2}
    db = NodeProcess(orthanc.node, orthanc.folder).database()
    try:
        assert [a[2] for a in db.attempts_of(study.study_uid)] == ["interrupted", "succeeded"]
    finally:
        db.close()
    starts = [r.split()[0] for r in _runs(start_log)]
    runs = [r.split()[0] for r in _runs(_runlog(orthanc))]
    assert starts.count(study.study_uid) == 2  # the interrupted run and the one that finished
    assert runs.count(study.study_uid) == 1  # only the second got past the wait
    check_spool_integrity(orthanc.node.data_dir, study.sop_instance_uids)


def test_a_study_that_is_not_multiphase_ct_is_skipped(plugin_orthanc, tmp_path) -> None:
    """One CT series (MinSeries is 2 here): recorded as skipped, never queued, no result."""
    orthanc = plugin_orthanc
    write_phantom_study(tmp_path / "one", seed=26, phases=["VP"], slices=SLICES, rows=128, columns=128)
    files = sorted((tmp_path / "one" / "dicom").rglob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sent = storescu(orthanc.dicom_port, files, called_ae="ORTHANC")
    assert acknowledged_count(sent.stderr) == len(files)
    record = wait_for(lambda: [r for r in orthanc.livernode_studies()["intake"] if r["study_uid"] == study_uid], 30,
                      "the plugin's decision")
    assert record[0]["decision"] == "skipped" and "2 needed" in record[0]["reason"]
    assert orthanc.node_state(study_uid) is None
    assert orthanc.result_sop_instance_uids(study_uid) == []


def test_intake_only_plugin_with_livernode_serve(tmp_path, study_factory) -> None:
    """RunNode false: the plugin only spools and queues; `livernode serve` (same data directory)
    processes and uploads into that Orthanc with its own destination configuration."""
    data_dir = tmp_path / "shared-data"
    orthanc = PluginOrthanc(tmp_path / "orthanc", _plugin_node(data_dir), plugin={"RunNode": False})
    orthanc.start()
    try:
        from tests.integration.orthanc_plugin_peer import PASSWORD, USER

        destination = {"kind": "orthanc", "name": "this-orthanc", "url": orthanc.url, "username": USER,
                       "password": PASSWORD}
        node = NodeProcess(NodeConfig(data_dir=data_dir, destinations=[destination]), tmp_path / "node").start()
        try:
            study = study_factory(27, slices=SLICES)
            _send(orthanc, study)
            assert _wait_final(orthanc, study.study_uid) == "delivered"
            assert len(orthanc.result_sop_instance_uids(study.study_uid)) == 1
            assert orthanc.livernode_studies()["mode"] == "intake-only"
            assert node.study_state(study.study_uid) == "delivered"
        finally:
            node.stop()
    finally:
        orthanc.stop()


def test_real_processor_inside_orthanc(tmp_path) -> None:
    """The real pipeline (node.processing:StudyProcessor) inside Orthanc: a SEG and an SR land in
    the study. Needs the bundled phantom-demo weights."""
    if not BUNDLED_MODEL_CARD.is_file():
        pytest.skip(f"the bundled model is not there yet ({BUNDLED_MODEL_CARD.relative_to(REPO)} is missing)")
    write_phantom_study(tmp_path / "study", seed=28, phases=["NC", "AP", "VP", "DP"], slices=SLICES,
                        rows=128, columns=128)
    files = sorted((tmp_path / "study" / "dicom").rglob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    orthanc = PluginOrthanc(tmp_path / "orthanc", _plugin_node(
        tmp_path / "data", processor_factory="node.processing:StudyProcessor", timeout_s=600))
    orthanc.start()
    try:
        sent = storescu(orthanc.dicom_port, files, called_ae="ORTHANC")
        assert acknowledged_count(sent.stderr) == len(files)
        assert _wait_final(orthanc, study_uid, timeout_s=600) == "delivered", \
            json.dumps(orthanc.livernode_studies())[-3000:]
        assert orthanc.result_sop_instance_uids(study_uid, ("SEG",)), "no SEG in the Orthanc study"
        assert orthanc.result_sop_instance_uids(study_uid, ("SR",)), "no SR in the Orthanc study"
    finally:
        orthanc.stop()
