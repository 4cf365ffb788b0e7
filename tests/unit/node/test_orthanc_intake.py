"""node.orthanc_intake without Orthanc: series selection, spooling Orthanc's files, READY, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.database import Database
from node.orthanc_intake import (
    SELF_DESTINATION,
    IntakeCriteria,
    RefusedFile,
    SeriesInfo,
    mark_study_ready,
    plugin_settings,
    select_series,
    spool_file,
)
from node.records import StoreOutcome
from node.settings import Settings
from node.spool import Spool
from pipeline.phantom import write_phantom_study


def test_select_series_takes_big_ct_series_only() -> None:
    series = [SeriesInfo("a", "CT", 24), SeriesInfo("b", "CT", 24), SeriesInfo("loc", "CT", 2),
              SeriesInfo("sr", "SR", 1)]
    chosen = select_series(series, IntakeCriteria(min_series=2))
    assert chosen.accepted and chosen.series == ("a", "b") and "48 instances" in chosen.reason
    too_few = select_series(series[:1] + series[2:], IntakeCriteria(min_series=2))
    assert not too_few.accepted and "2 needed" in too_few.reason
    assert "no CT series" in select_series([SeriesInfo("m", "MR", 40)], IntakeCriteria()).reason
    assert not select_series(series, IntakeCriteria(max_series=1)).accepted


def test_spool_file_indexes_once_and_refuses_what_the_listener_refuses(tmp_path: Path) -> None:
    write_phantom_study(tmp_path / "s", seed=3, phases=["VP"], slices=8, rows=32, columns=32)
    files = sorted((tmp_path / "s" / "dicom").rglob("*.dcm"))
    database = Database(tmp_path / "data" / "index.sqlite3")
    spool = Spool(tmp_path / "data", database, 0)
    try:
        data = files[0].read_bytes()
        assert spool_file(spool, data) == StoreOutcome.STORED
        assert spool_file(spool, data) == StoreOutcome.DUPLICATE
        with pytest.raises(RefusedFile, match="DICM"):
            spool_file(spool, data[128:])
        with pytest.raises(RefusedFile, match="MALFORMED"):
            spool_file(spool, data[:-100])  # truncated pixel data
        for path in files[1:]:
            spool_file(spool, path.read_bytes())
        [study] = database.receiving_studies()
        assert mark_study_ready(database, study.study_uid, "test") is True
        assert mark_study_ready(database, study.study_uid, "again") is False  # already READY
        assert database.study_state(study.study_uid).value == "ready"
    finally:
        database.close()


def test_plugin_settings_add_this_orthanc_and_forwarded_modalities() -> None:
    orthanc = {"HttpPort": 8042, "DicomAet": "ORTHANC", "RegisteredUsers": {"livernode": "pw"},
               "DicomModalities": {"pacs": ["PACS", "10.0.0.5", 104], "ws": {"AET": "WS", "Host": "h", "Port": 11}}}
    settings = plugin_settings(Settings(), orthanc, {"OrthancUser": "livernode", "ForwardToModalities": ["pacs", "ws"]})
    by_name = {d.name: d for d in settings.destinations}
    assert by_name[SELF_DESTINATION].url == "http://127.0.0.1:8042"
    assert by_name[SELF_DESTINATION].username == "livernode" and by_name[SELF_DESTINATION].password == "pw"
    assert (by_name["modality-pacs"].ae_title, by_name["modality-pacs"].port) == ("PACS", 104)
    assert by_name["modality-ws"].calling_ae_title == "ORTHANC"
    with pytest.raises(ValueError, match="not in DicomModalities"):
        plugin_settings(Settings(), orthanc, {"ForwardToModalities": ["nowhere"]})
    with pytest.raises(ValueError, match="RegisteredUsers"):
        plugin_settings(Settings(), orthanc, {"OrthancUser": "stranger"})
