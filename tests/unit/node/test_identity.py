"""Deterministic result UIDs."""

from __future__ import annotations

import dataclasses

import pytest
from pydicom.uid import UID

from node.identity import config_digest, derive_result_uids, derive_uid, device_uid
from pipeline.types import ModelIdentity, Phase

MODEL = ModelIdentity("livernode-cascade", "1.0.0", "cd" * 32)
SERIES = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]


def _all_uids(result) -> list[str]:
    uids = [result.sr.series_uid, result.sr.instance_uid, result.patient_tracking_uid,
            result.device_uid]
    for pair in result.seg.values():
        uids += [pair.series_uid, pair.instance_uid]
    uids += list(result.lesion_tracking.values()) + list(result.organ_tracking.values())
    return uids


def test_same_input_same_uids_in_any_order():
    digest = config_digest({"b": 2, "a": [1, 2]})
    first = derive_result_uids(SERIES, MODEL, digest, [1, 2], phases=(Phase.VP, Phase.AP))
    again = derive_result_uids(list(reversed(SERIES)), MODEL, config_digest({"a": [1, 2], "b": 2}),
                               [2, 1], phases=(Phase.AP, Phase.VP))
    assert first == again
    uids = _all_uids(first)
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64


def test_model_version_config_and_input_change_every_uid():
    digest = config_digest({"sensitivity": (1.0, 4.0)})
    base = _all_uids(derive_result_uids(SERIES, MODEL, digest, [1, 2]))
    newer = dataclasses.replace(MODEL, version="1.0.1")
    for other in (
        derive_result_uids(SERIES, newer, digest, [1, 2]),
        derive_result_uids(SERIES, MODEL, config_digest({"sensitivity": (1.0, 3.0)}), [1, 2]),
        derive_result_uids(SERIES[:2], MODEL, digest, [1, 2]),
    ):
        changed = _all_uids(other)
        if other.device_uid == base[3]:  # the device UID depends on the model only
            changed[3] = "same-model"
        assert not set(changed) & set(base)


def test_device_uid_follows_the_model_only():
    assert device_uid(MODEL) == derive_result_uids(SERIES, MODEL, "x", []).device_uid
    assert device_uid(MODEL) == derive_result_uids(SERIES[:1], MODEL, "y", []).device_uid
    assert device_uid(MODEL) != device_uid(dataclasses.replace(MODEL, version="2"))


def test_failure_reports_get_their_own_sr_uids():
    ok = derive_result_uids(SERIES, MODEL, "c", [])
    failed = derive_result_uids(SERIES, MODEL, "c", [], failure_reason="timeout")
    other = derive_result_uids(SERIES, MODEL, "c", [], failure_reason="no venous phase")
    assert len({ok.sr.instance_uid, failed.sr.instance_uid, other.sr.instance_uid}) == 3
    assert ok.seg == failed.seg


def test_prefix_and_inputs_are_checked():
    assert derive_uid("r", ["a"], prefix="1.2.826.0.1.").startswith("1.2.826.0.1.")
    assert derive_uid("r", ["a"]).startswith("2.25.")
    with pytest.raises(ValueError, match="prefix"):
        derive_uid("r", ["a"], prefix="1.2.x.")
    with pytest.raises(ValueError, match="input_series_uids"):
        derive_result_uids([], MODEL, "c", [])


def test_config_digest_of_a_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Config:
        factors: tuple[float, float] = (1.0, 4.0)
        phase: Phase = Phase.VP

    assert config_digest(Config()) == config_digest({"factors": [1.0, 4.0], "phase": "VP"})
    assert config_digest(Config()) != config_digest(Config(factors=(1.0, 2.0)))
