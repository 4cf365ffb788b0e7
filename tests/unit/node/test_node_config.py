"""The node's configuration sections: defaults, AE titles, destinations, TLS."""

from __future__ import annotations

import pytest

from node.settings import SettingsError, validate_settings


def _problems(raw: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        validate_settings(raw, "test.yaml")
    return [str(p) for p in caught.value.problems]


def test_destinations_of_both_kinds() -> None:
    settings = validate_settings({"destinations": [
        {"kind": "cstore", "name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104},
        {"kind": "orthanc", "name": "orthanc", "url": "http://127.0.0.1:8042"},
    ]})
    assert [d.kind for d in settings.destinations] == ["cstore", "orthanc"]


def test_destination_names_are_unique_and_plain() -> None:
    dest = {"kind": "orthanc", "name": "o", "url": "http://x"}
    assert any("unique" in p for p in _problems({"destinations": [dest, dest]}))
    assert any("destination name" in p for p in _problems({"destinations": [{**dest, "name": "a/b"}]}))


def test_bad_values_are_named() -> None:
    assert _problems({"dicom": {"ae_title": "A" * 17}})[0].startswith("dicom.ae_title: ")
    assert _problems({"dicom": {"port": 70000}})[0].startswith("dicom.port: ")
    assert _problems({"completeness": {"required_phases": ["XX"]}})[0].startswith("completeness.required_phases")
    assert _problems({"worker": {"processor_factory": "nocolon"}})[0].startswith("worker.processor_factory")
    assert _problems({"dicom": {"tls": {"enabled": True}}})[0].startswith("dicom.tls")
