"""Checks on a received C-STORE data set before it is stored (pure functions on bytes).

`check_encoding` walks every data element of the encoded stream, following sequences, items and
encapsulated fragments, and reports a truncated or malformed stream (pydicom reads a short value
silently). `read_identity` reads the few attributes the index needs. Neither decodes pixel data.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

from pydicom.filereader import read_dataset
from pydicom.uid import UID

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_MAX_DEPTH = 64
#: Last tag `read_identity` needs (SeriesInstanceUID); the times and description come before it.
_STOP_AFTER = 0x0020000E


class MalformedDataset(ValueError):
    """The encoded data set is truncated or not well formed."""


@dataclass(frozen=True)
class DatasetIdentity:
    """The attributes of a data set the node indexes (no patient identifiers)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    acquisition_time_s: float | None
    bolus_start_time_s: float | None


class _Walker:
    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.endian = "<" if little else ">"
        self.end = len(data)
        self.top_level_tags: set[int] = set()

    def _need(self, pos: int, count: int, what: str) -> None:
        if pos + count > self.end:
            raise MalformedDataset(f"truncated: {what} at byte {pos} needs {count} bytes, {self.end - pos} left")

    def _tag(self, pos: int) -> int:
        self._need(pos, 4, "tag")
        group, elem = struct.unpack_from(self.endian + "HH", self.data, pos)
        return (group << 16) | elem

    def dataset(self, pos: int, stop: int, depth: int, implicit: bool, until_item_end: bool) -> int:
        """Walk elements from `pos`; return the position after the data set (or its item end)."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset("sequences nested too deep")
        while pos < stop:
            tag = self._tag(pos)
            if tag == _ITEM_END:
                if not until_item_end:
                    raise MalformedDataset(f"unexpected item delimiter at byte {pos}")
                self._need(pos, 8, "item delimiter")
                return pos + 8
            if depth == 0:
                self.top_level_tags.add(tag)
            pos = self.element(pos, stop, depth, implicit)
        if until_item_end:
            raise MalformedDataset("truncated: an item has no end")
        if pos != stop:
            raise MalformedDataset(f"truncated: element runs {pos - stop} bytes past its end")
        return pos

    def element(self, pos: int, stop: int, depth: int, implicit: bool) -> int:
        tag = self._tag(pos)
        if tag in (_ITEM, _SEQ_END):
            raise MalformedDataset(f"unexpected item tag at byte {pos}")
        if implicit:
            self._need(pos, 8, "element header")
            (length,) = struct.unpack_from(self.endian + "I", self.data, pos + 4)
            vr = b"SQ" if length == _UNDEFINED else b"??"
            pos += 8
        else:
            self._need(pos, 6, "element header")
            vr = self.data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                self._need(pos, 12, "element header")
                (length,) = struct.unpack_from(self.endian + "I", self.data, pos + 8)
                pos += 12
            else:
                if not vr.isalpha():
                    raise MalformedDataset(f"not a VR {vr!r} at byte {pos + 4}")
                (length,) = struct.unpack_from(self.endian + "H", self.data, pos + 6)
                pos += 8
        if length == _UNDEFINED:
            inner_implicit = implicit or vr == b"UN"
            return self.sequence(pos, stop, depth + 1, inner_implicit, fragments=(tag == 0x7FE00010))
        self._need(pos, length, f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if vr == b"SQ" and length:
            self.defined_sequence(pos, pos + length, depth + 1, implicit)
        return pos + length

    def defined_sequence(self, pos: int, stop: int, depth: int, implicit: bool) -> None:
        while pos < stop:
            pos = self.item(pos, stop, depth, implicit, fragments=False)
        if pos != stop:
            raise MalformedDataset("sequence items overrun their sequence")

    def sequence(self, pos: int, stop: int, depth: int, implicit: bool, fragments: bool) -> int:
        while True:
            tag = self._tag(pos)
            if tag == _SEQ_END:
                self._need(pos, 8, "sequence delimiter")
                return pos + 8
            pos = self.item(pos, stop, depth, implicit, fragments)

    def item(self, pos: int, stop: int, depth: int, implicit: bool, fragments: bool) -> int:
        tag = self._tag(pos)
        if tag != _ITEM:
            raise MalformedDataset(f"expected an item at byte {pos}")
        self._need(pos, 8, "item header")
        (length,) = struct.unpack_from(self.endian + "I", self.data, pos + 4)
        pos += 8
        if length == _UNDEFINED:
            if fragments:
                raise MalformedDataset("a pixel data fragment has undefined length")
            return self.dataset(pos, stop, depth, implicit, until_item_end=True)
        self._need(pos, length, "item value")
        if not fragments and length:
            self.dataset(pos, pos + length, depth, implicit, until_item_end=False)
        return pos + length


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    uid = UID(transfer_syntax_uid)
    deflated = uid == "1.2.840.10008.1.2.1.99"
    return uid.is_implicit_VR, uid.is_little_endian, deflated


def _inflate(stream: bytes) -> bytes:
    try:
        return zlib.decompress(stream, -zlib.MAX_WBITS)
    except zlib.error as error:
        raise MalformedDataset(f"deflated data set cannot be inflated: {error}") from None


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def check_encoding(stream: bytes, transfer_syntax_uid: str) -> bool:
    """Raise MalformedDataset unless every element of `stream` is complete and well formed.

    Returns whether the data set has pixel data (a stream cut at an element boundary is well
    formed but, for an image, lacks its pixel data)."""
    if not stream:
        raise MalformedDataset("empty data set")
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    data = _inflate(stream) if deflated else stream
    walker = _Walker(data, implicit, little)
    walker.dataset(0, len(data), 0, implicit, until_item_end=False)
    return bool(walker.top_level_tags & _PIXEL_TAGS)


def _time_s(value: object) -> float | None:
    text = str(value or "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def read_identity(stream: bytes, transfer_syntax_uid: str) -> DatasetIdentity:
    """Read the UIDs, modality, series description and times from an encoded data set."""
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    data = _inflate(stream) if deflated else stream
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dataset(io.BytesIO(data), implicit, little,
                              stop_when=lambda tag, vr, length: tag > _STOP_AFTER)
        except Exception as error:  # pydicom raises many types on garbage; all mean "unreadable"
            raise MalformedDataset(f"cannot be parsed: {type(error).__name__}") from None
    return DatasetIdentity(
        sop_class_uid=str(ds.get("SOPClassUID", "") or "").strip(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
        study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip(),
        series_description=str(ds.get("SeriesDescription", "") or "").strip()[:64],
        acquisition_time_s=_time_s(ds.get("AcquisitionTime")),
        bolus_start_time_s=_time_s(ds.get("ContrastBolusStartTime")),
    )


def is_valid_uid(value: str) -> bool:
    """A syntactically valid UID (digits and dots, at most 64 characters)."""
    if not value or len(value) > 64:
        return False
    parts = value.split(".")
    return all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)
