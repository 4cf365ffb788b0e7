"""Encoded data set checks: truncation anywhere is found; the identity is read without pixels."""

from __future__ import annotations

import io

import pytest
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from node.dataset_check import MalformedDataset, check_encoding, is_valid_uid, read_identity
from tests.support.ct_series import CTSeriesSpec, make_ct_series


def _encoded(ds, syntax=ExplicitVRLittleEndian) -> tuple[bytes, str]:
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    stream = io.BytesIO(raw)
    stream.seek(132)
    meta = _read_file_meta_info(stream)
    return raw[stream.tell():], str(meta.TransferSyntaxUID)


@pytest.fixture(scope="module")
def ct_slice():
    slices, _ = make_ct_series(CTSeriesSpec(rows=32, cols=32, slices=2))
    return slices[0]


def test_complete_stream_passes_and_identity_is_read(ct_slice) -> None:
    stream, syntax = _encoded(ct_slice.copy())
    assert check_encoding(stream, syntax) is True
    ident = read_identity(stream, syntax)
    assert ident.sop_instance_uid == ct_slice.SOPInstanceUID
    assert ident.series_uid == ct_slice.SeriesInstanceUID and ident.modality == "CT"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_truncation_inside_any_element_is_found(ct_slice, syntax) -> None:
    stream, ts = _encoded(ct_slice.copy(), syntax)
    for cut in (len(stream) - 1, len(stream) - 7, len(stream) // 2, 5):
        with pytest.raises(MalformedDataset):
            check_encoding(stream[:cut], ts)


def test_cut_at_an_element_boundary_has_no_pixel_data(ct_slice) -> None:
    ds = ct_slice.copy()
    stream, ts = _encoded(ds)
    pixel_offset = stream.index(b"\xe0\x7f\x10\x00")
    assert check_encoding(stream[:pixel_offset], ts) is False


def test_uid_syntax() -> None:
    assert is_valid_uid("1.2.840.10008.1.2")
    assert not is_valid_uid("1.2.03") and not is_valid_uid("../etc") and not is_valid_uid("1." + "1" * 70)
