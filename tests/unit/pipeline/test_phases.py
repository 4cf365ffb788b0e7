"""Phase identification: description rules, time rules, image check, competition, no venous."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:  # tests.support is imported by path from the repository root
    sys.path.insert(0, str(_REPO))

from pipeline.config import PhaseRulesConfig  # noqa: E402
from pipeline.enhancement import EnhancementStats, classify_enhancement, measure_enhancement  # noqa: E402
from pipeline.errors import ConfigError, InputError  # noqa: E402
from pipeline.phases import description_phase, identify_phases, normalise_description  # noqa: E402
from pipeline.series import load_series, scan_files  # noqa: E402
from pipeline.types import Phase  # noqa: E402
from tests.support.series_factory import abdomen_hu, write_ct_series  # noqa: E402

PIXEL_MM = 2.5


@dataclass
class Spec:
    pixels: str  # phase whose enhancement the pixels show
    description: str
    time: str = "120000"
    thickness_mm: float = 5.0
    slices: int = 10
    agent: str | None = "Iomeprol"
    bolus_start: str | None = None


def _study(tmp_path: Path, specs: list[Spec]):
    study = generate_uid()
    for number, spec in enumerate(specs, start=1):
        hu = abdomen_hu((spec.slices, 128, 128), PIXEL_MM, spec.pixels, seed=number)
        write_ct_series(
            tmp_path / f"s{number}", hu, study_uid=study, series_number=number, description=spec.description,
            acquisition_time=spec.time, slice_spacing_mm=spec.thickness_mm, slice_thickness_mm=spec.thickness_mm,
            pixel_spacing_mm=PIXEL_MM, contrast_agent=spec.agent, contrast_start_time=spec.bolus_start,
        )
    scan = scan_files([tmp_path])
    assert scan.skipped == []
    return scan.series


def _by_number(assignment) -> dict[Phase, int]:
    return {phase: info.series_number for phase, info in assignment.chosen.items()}


def _decision(assignment, series, outcome_prefix: str = ""):
    found = [d for d in assignment.decisions if d.subject == series.key and d.outcome.startswith(outcome_prefix)]
    assert found, assignment.decisions
    return found[0]


@pytest.mark.parametrize(
    ("description", "phase"),
    [
        ("Abdomen nativ 5.0 B30f", Phase.NC),
        ("NON CONTRAST 5mm", Phase.NC),
        ("Pre-contrast abdomen", Phase.NC),
        ("Abdomen sans injection", Phase.NC),
        ("TC simple abdomen", Phase.NC),
        ("Fase basale", Phase.NC),
        ("Sin contraste", Phase.NC),
        ("Arteriell 3.0 I30f", Phase.AP),
        ("Late arterial phase", Phase.AP),
        ("Temps artériel", Phase.AP),
        ("Fase arteriosa", Phase.AP),
        ("Abd/Pel PV 5mm", Phase.VP),
        ("Portalvenös 5.0 Br40", Phase.VP),
        ("Portal Venous 70s", Phase.VP),
        ("Temps portal", Phase.VP),
        ("Fase venosa portale", Phase.VP),
        ("Spätphase 5.0", Phase.DP),
        ("Delayed 3 min", Phase.DP),
        ("Temps tardif", Phase.DP),
        ("Fase tardía", Phase.DP),
        ("Equilibrium phase", Phase.DP),
        ("venous delayed", Phase.DP),
    ],
)
def test_description_rules_in_several_languages(description, phase):
    assert description_phase(description, PhaseRulesConfig())[0] is phase


@pytest.mark.parametrize("description", ["", "Abdomen 5mm", "Arterial and portal venous"])
def test_descriptions_without_a_single_phase(description):
    found, why = description_phase(description, PhaseRulesConfig())
    assert found is None and why


def test_normalise_description_folds_accents():
    assert normalise_description("  Portalvenös_SPÄT ") == "portalvenos spat"


def test_full_study_from_descriptions_confirmed_by_image(tmp_path):
    series = _study(
        tmp_path,
        [
            Spec("NC", "Abdomen nativ", "120000", agent=None),
            Spec("AP", "Arteriell", "120030"),
            Spec("VP", "Portalvenös", "120110"),
            Spec("DP", "Spät", "120300"),
            Spec("VP", "Bolus tracking", "120020", slices=10),
        ],
    )
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.NC: 1, Phase.AP: 2, Phase.VP: 3, Phase.DP: 4}
    assert assignment.reference_phase is Phase.VP and assignment.present == (Phase.NC, Phase.AP, Phase.VP, Phase.DP)
    vp = _decision(assignment, series[2], "VP")
    assert vp.stage == "phase" and "image agrees" in vp.rule and vp.confidence == pytest.approx(0.9)
    assert _decision(assignment, series[4]).outcome == "excluded"


def test_acquisition_time_rule_when_descriptions_say_nothing(tmp_path):
    series = _study(
        tmp_path,
        [
            Spec("NC", "Abdomen 5mm", "120000", agent=None),
            Spec("AP", "Abdomen 5mm", "120032"),
            Spec("VP", "Abdomen 5mm", "120115"),
            Spec("DP", "Abdomen 5mm", "120300"),
        ],
    )
    assignment = identify_phases(series, PhaseRulesConfig(image_check=False))
    assert _by_number(assignment) == {Phase.NC: 1, Phase.AP: 2, Phase.VP: 3, Phase.DP: 4}
    ap = _decision(assignment, series[1], "AP")
    assert "+32 s after the first series" in ap.rule and ap.confidence == pytest.approx(0.7)
    # with the image check the same labels are confirmed
    assert _by_number(identify_phases(series)) == _by_number(assignment)


def test_contrast_bolus_start_time_is_the_time_reference(tmp_path):
    series = _study(
        tmp_path,
        [
            Spec("AP", "Abdomen", "120035", bolus_start="120000"),
            Spec("VP", "Abdomen", "120110", bolus_start="120000"),
        ],
    )
    assignment = identify_phases(series, PhaseRulesConfig(image_check=False))
    assert _by_number(assignment) == {Phase.AP: 1, Phase.VP: 2}
    assert "ContrastBolusStartTime" in _decision(assignment, series[1]).rule


def test_image_check_relabels_a_mislabelled_series(tmp_path):
    series = _study(
        tmp_path,
        [
            Spec("NC", "Portal venous", "120000", agent=None),  # says venous, shows no contrast
            Spec("VP", "Abdomen", "120110"),
        ],
    )
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.NC: 1, Phase.VP: 2}
    relabel = _decision(assignment, series[0], "NC")
    assert relabel.rule.startswith("relabelled VP -> NC") and "no enhanced aorta" in relabel.rule
    assert relabel.confidence == pytest.approx(0.8)


def test_arterial_label_on_a_venous_image_is_relabelled(tmp_path):
    series = _study(tmp_path, [Spec("VP", "Arterial phase", "120100")])
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.VP: 1}
    assert "relabelled AP -> VP" in _decision(assignment, series[0]).rule


def test_competing_candidates_prefer_the_configured_thickness(tmp_path):
    series = _study(
        tmp_path,
        [
            Spec("VP", "Portal venous 1mm", "120110", thickness_mm=1.0, slices=40),
            Spec("VP", "Portal venous 5mm", "120110", thickness_mm=5.0, slices=10),
            Spec("NC", "Nativ", "120000", agent=None),
        ],
    )
    assignment = identify_phases(series)
    assert assignment.chosen[Phase.VP].series_number == 2
    loser = _decision(assignment, series[0], "not used")
    assert loser.outcome == "not used (VP)"
    assert "slice thickness 5 mm is nearer the preferred 5 mm than 1 mm" in loser.rule
    assert "chosen for VP" in _decision(assignment, series[1], "chosen").rule
    thin = identify_phases(series, PhaseRulesConfig(preferred_slice_thickness_mm=1.0))
    assert thin.chosen[Phase.VP].series_number == 1


def test_equal_thickness_prefers_more_slices(tmp_path):
    series = _study(
        tmp_path,
        [Spec("VP", "Portal venous", "120110", slices=12), Spec("VP", "Portal venous", "120110", slices=10)],
    )
    assignment = identify_phases(series)
    assert assignment.chosen[Phase.VP].series_number == 1
    assert "more slices (12 vs 10)" in _decision(assignment, series[1], "not used").rule


def test_no_venous_phase_is_an_input_error(tmp_path):
    series = _study(tmp_path, [Spec("NC", "Nativ", "120000", agent=None), Spec("AP", "Arterial", "120030")])
    with pytest.raises(InputError, match="no portal venous") as raised:
        identify_phases(series)
    assert "'Arterial': AP" in str(raised.value)
    fallback = identify_phases(series, PhaseRulesConfig(allow_reference_fallback=True))
    assert fallback.reference_phase is Phase.AP
    assert any(d.outcome == "reference (AP)" for d in fallback.decisions)


def test_image_only_labels_when_the_header_says_nothing(tmp_path):
    series = _study(
        tmp_path,
        [Spec("VP", "Abdomen", "120110"), Spec("DP", "Abdomen", "120310")],
    )
    # first series enhanced and no bolus start time: no time reference, the image decides
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.VP: 1, Phase.DP: 2}
    assert "from the image" in _decision(assignment, series[0]).rule
    assert "so delayed" in _decision(assignment, series[1]).rule


def test_enhancement_classifier_thresholds():
    config = PhaseRulesConfig()
    assert classify_enhancement(EnhancementStats(math.nan, 50.0, 0.0, 10), config).outcome == "NC"
    assert classify_enhancement(EnhancementStats(300.0, 60.0, 1.0, 10), config).outcome == "AP"
    assert classify_enhancement(EnhancementStats(160.0, 100.0, 1.0, 10), config).outcome == "VP/DP"
    assert classify_enhancement(EnhancementStats(210.0, 100.0, 1.0, 10), config).outcome == "contrast"


def test_enhancement_measures_the_aorta(tmp_path):
    series = _study(tmp_path, [Spec("AP", "x")])
    loaded = load_series(series[0])
    stats = measure_enhancement(loaded.hu[3:7], loaded.geometry)
    assert stats.aorta_hu == pytest.approx(280.0, abs=15.0)
    assert stats.vessel_found_fraction == 1.0


def test_phase_rules_config_is_checked():
    with pytest.raises(ConfigError, match="vp_patterns"):
        PhaseRulesConfig(vp_patterns=("portal(",))
    with pytest.raises(ConfigError, match="ap_window_s"):
        PhaseRulesConfig(ap_window_s=(60.0, 30.0))


def test_arterial_label_is_kept_when_another_series_is_the_venous_phase(tmp_path):
    # a weak (late) arterial phase looks venous to the image check; the study's own venous series
    # shows the header is right, so it is not relabelled (two "venous" series would lose the AP)
    series = _study(tmp_path, [Spec("VP", "Arterial phase", "120030"), Spec("VP", "Portal venous", "120110")])
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.AP: 1, Phase.VP: 2}
    assert "relabelled" not in _decision(assignment, series[0]).rule


def test_contrast_label_backed_by_the_contrast_agent_is_kept_without_an_enhanced_aorta(tmp_path):
    # "no enhanced aorta found" is absence of evidence: with ContrastBolusAgent set the header stays
    series = _study(tmp_path, [Spec("NC", "Arterial phase", "120030"), Spec("VP", "Portal venous", "120110")])
    assignment = identify_phases(series)
    assert _by_number(assignment) == {Phase.AP: 1, Phase.VP: 2}
    assert "header kept (ContrastBolusAgent" in _decision(assignment, series[0]).rule
