"""The listener's per-instance checks give a named status and a reason."""

from __future__ import annotations

import io

import pytest
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from node.scp import StoreStatus, evaluate_store, peer_allowed
from tests.support.ct_series import CTSeriesSpec, make_ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def encoded():
    ds = make_ct_series(CTSeriesSpec(rows=16, cols=16, slices=1))[0][0]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    stream = io.BytesIO(raw)
    stream.seek(132)
    _read_file_meta_info(stream)
    return ds, raw[stream.tell():]


def _status(ds, stream, sop_class=CT, sop_instance=None, policy="refuse"):
    answer, meta = evaluate_store(sop_class, sop_instance or ds.SOPInstanceUID, str(ExplicitVRLittleEndian),
                                  stream, policy)
    return (answer.status, answer.comment) if answer else (StoreStatus.SUCCESS, meta)


def test_good_instance_passes(encoded) -> None:
    ds, stream = encoded
    status, meta = _status(ds, stream)
    assert status == StoreStatus.SUCCESS and meta.processable and meta.series_uid == ds.SeriesInstanceUID


def test_each_problem_has_its_status(encoded) -> None:
    ds, stream = encoded
    assert _status(ds, stream[:-3])[0] == StoreStatus.CANNOT_UNDERSTAND_MALFORMED
    assert _status(ds, stream, sop_instance="1.2.3")[0] == StoreStatus.CANNOT_UNDERSTAND_INSTANCE_UID
    assert _status(ds, stream, sop_class=SC, policy="ignore")[0] == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert _status(ds, stream, sop_class=SC)[0] == StoreStatus.SOP_CLASS_NOT_SUPPORTED


def test_peer_address_allow_list() -> None:
    assert peer_allowed("10.1.2.3", ())
    assert peer_allowed("10.1.2.3", ("10.0.0.0/8",))
    assert not peer_allowed("192.168.1.1", ("10.0.0.0/8", "127.0.0.1"))
