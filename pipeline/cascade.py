"""The detection cascade, steps 2-9 of DESIGN section 3, on one study's probability maps.

:func:`run_cascade` takes UNet_whole's (14, Z, Y, X) softmax (float16 or float32, memmap allowed),
the HU volumes per phase on the same grid, the grid's geometry, an optional patch model and the
:class:`~pipeline.config.CascadeConfig`, and returns a :class:`CascadeResult`:

1. label maps at every sensitivity factor plus LiverMax, in one slab-wise pass (no second inference),
   lesions optionally grown by hysteresis (``pipeline.lesion_growth``, off by default);
   the liver outline of the base and high maps redrawn (``pipeline.liver_region``: liver only where
   P(liver or lesion) exceeds ``liver_probability_threshold``, then its largest connected region);
2. seg2det on the base (first factor) and high (last factor) maps;
3. reclassification of both lesion sets with the patch model (skipped, and recorded as a decision,
   when there is none: then the "ReCls" sets equal the raw ones); then, with a lesion typer, the
   kept lesions are judged on their enhancement features: "not a lesion" drops them from the base
   set (at the base sensitivity), a type retypes them in both sets;
4. patient classes (Base, Base+ReCls, High+ReCls) and the joint verdict of Base+ReCls and
   High+ReCls;
5. the reported lesions: High+ReCls, each *certain* when it overlaps a Base+ReCls lesion, else
   *suspicious*; ``sensitivities`` records which sensitivities found it.

:meth:`CascadeResult.to_findings` builds :class:`pipeline.types.Findings`;
:func:`save_evaluation_npz` writes the per-case file :mod:`pipeline.evaluate` reads.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.classify import JointVerdict, classify_patient, joint_verdict
from pipeline.config import CascadeConfig
from pipeline.lesion_growth import grow_lesions
from pipeline.lesion_typer import LesionTyper, lesions_to_rescue, retype_lesions, typer_probabilities
from pipeline.liver_region import keep_largest_liver_region, threshold_liver
from pipeline.livermax import livermax_vector
from pipeline.matching import SensitivityMatch, match_sensitivities
from pipeline.reclassify import PatchModel, ReclassifyOutcome, ReclassifyResult, reclassify
from pipeline.seg2det import paint_lesions, seg2det
from pipeline.sensitivity import MultiSensitivityResult, scaled_argmax, validate_probabilities
from pipeline.shuffle import PatchSource, ShuffleSettings
from pipeline.typer_grid import FeatureGrid, StudyHU, typer_hu
from pipeline.types import (
    PHASE_ORDER,
    Decision,
    Findings,
    Label,
    Lesion,
    LesionType,
    ModelIdentity,
    PatientClass,
    Phase,
    VolumeGeometry,
)

logger = logging.getLogger(__name__)


@dataclass
class CascadeResult:
    """Everything the cascade concluded about one study (see the module docstring)."""

    geometry: VolumeGeometry
    base_factor: float
    high_factor: float
    base_labels: np.ndarray  # uint8 argmax at the base factor (organs and lesions)
    high_labels: np.ndarray  # uint8 argmax at the high factor
    organ_labels: np.ndarray  # uint8: labels 7-13 of the base map, 0 elsewhere (lesions included)
    base: list[Lesion]
    base_recls: list[Lesion]
    high: list[Lesion]
    high_recls: list[Lesion]
    reported: list[Lesion]
    reclassified: bool
    class_base: PatientClass
    class_base_recls: PatientClass
    class_high_recls: PatientClass
    verdict: JointVerdict
    livermax: dict[LesionType, float]
    sensitivity_match: SensitivityMatch
    reclassify_outcomes: dict[str, list[ReclassifyOutcome]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_findings(
        self,
        study_uid: str,
        reference_series_uid: str,
        model: ModelIdentity,
        phases_present: tuple[Phase, ...] = (),
    ) -> Findings:
        """The study's :class:`Findings`: reported lesions, organ map, Base+ReCls / High+ReCls classes."""
        return Findings(
            study_uid=study_uid,
            reference_series_uid=reference_series_uid,
            geometry=self.geometry,
            lesions=list(self.reported),
            organ_labels=self.organ_labels,
            class_base=self.class_base_recls,
            class_high=self.class_high_recls,
            livermax=dict(self.livermax),
            model=model,
            phases_present=phases_present,
            sensitivity_factors=(self.base_factor, self.high_factor),
            timings_s=dict(self.timings_s),
            decisions=list(self.decisions),
        )

    def evaluation_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the evaluation file (see docs/cascade.md)."""
        shape = self.geometry.shape
        return {
            "base": self.base_labels,
            "base_recls": paint_lesions(self.base_recls, shape, base=self.organ_labels),
            "high_recls": paint_lesions(self.high_recls, shape, base=self.organ_labels),
            "livermax": livermax_vector(self.livermax),
            "spacing_mm": np.asarray(self.geometry.spacing_mm, dtype=np.float64),
            "reclassified": np.asarray(self.reclassified),
        }


def save_evaluation_npz(result: CascadeResult, path: Path | str) -> Path:
    """Write ``<case>.npz`` for :func:`pipeline.evaluate.evaluate_folders` (compressed)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"evaluation file must end in .npz, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **result.evaluation_arrays())
    return path


def _check_inputs(
    probabilities: np.ndarray, hu_by_phase: Mapping[Phase, np.ndarray], geometry: VolumeGeometry
) -> None:
    validate_probabilities(probabilities)
    if tuple(probabilities.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"probability grid {probabilities.shape[1:]} != geometry shape {geometry.shape}")
    for phase, hu in hu_by_phase.items():
        if tuple(hu.shape) != tuple(geometry.shape):
            raise ValueError(f"HU volume of {Phase(phase).value} has shape {hu.shape}, expected {geometry.shape}")


def _mark_reported(high_recls: list[Lesion], match: SensitivityMatch, base: float, high: float) -> list[Lesion]:
    same = set(match.same_ids)
    return [
        dataclasses.replace(
            lesion,
            certain=lesion.lesion_id in same,
            sensitivities=(base, high) if lesion.lesion_id in same else (high,),
        )
        for lesion in high_recls
    ]


def sensitivity_label_maps(
    probabilities: np.ndarray, config: CascadeConfig, *, compute_livermax: bool = True
) -> MultiSensitivityResult:
    """Step 1: the label map at every sensitivity factor (and LiverMax) with the liver outline
    steps the configuration turns on (``pipeline.liver_region``). Training code that needs the
    cascade's own detections (the typer's false positives) calls this too."""
    growth = config.lesion_growth_factor
    factors = config.sensitivity_factors
    if growth:
        factors = factors + tuple(f * growth for f in factors)
    multi = scaled_argmax(probabilities, factors, slab_slices=config.slab_slices,
                          compute_livermax=compute_livermax)
    maps = {}
    for factor in config.sensitivity_factors:
        labels = multi.label_maps[factor]
        if growth:
            labels = grow_lesions(labels, multi.label_maps[factor * growth])
        if config.liver_probability_threshold > 0:
            labels = threshold_liver(labels, probabilities, config.liver_probability_threshold, config.slab_slices)
        if config.keep_largest_liver_region:
            labels = keep_largest_liver_region(labels)
        maps[factor] = labels
    return dataclasses.replace(multi, label_maps=maps)


def _rescue_small_malignant(
    dropped: Sequence[Lesion],
    hu: Mapping[Phase, np.ndarray],
    labels: np.ndarray,
    geometry: VolumeGeometry,
    lesion_typer: LesionTyper,
    config: CascadeConfig,
    typer_grid: FeatureGrid | None,
    moved_hu: Mapping[Phase, np.ndarray] | None,
    max_volume_ml: float,
) -> list[Lesion]:
    """The lesions of at most `max_volume_ml` that reclassification `dropped` from the map `labels`
    and the malignant rescue keeps."""
    candidates = [lesion for lesion in dropped if lesion.volume_ml <= max_volume_ml]
    probabilities = typer_probabilities(candidates, hu, labels, geometry, lesion_typer, typer_grid, moved_hu)
    return lesions_to_rescue(candidates, probabilities, config.rescue_malignant_probability)


def fnh_like_read_as_hcc(lesions: Sequence[Lesion]) -> tuple[list[Lesion], int]:
    """`lesions` with every FNH-like (Other) one typed HCC instead, and how many there were: the
    high-sensitivity reading of a study without a delayed phase, where an arterially enhancing
    lesion without visible venous washout may still be an HCC."""
    out = [dataclasses.replace(lesion, lesion_type=LesionType.HCC) if lesion.lesion_type == LesionType.OTHER
           else lesion for lesion in lesions]
    return out, sum(lesion.lesion_type == LesionType.OTHER for lesion in lesions)


def run_cascade(
    probabilities: np.ndarray,
    hu_by_phase: Mapping[Phase, np.ndarray],
    geometry: VolumeGeometry,
    patch_model: PatchModel | None,
    config: CascadeConfig,
    *,
    patch_channels: Sequence[np.ndarray] | None = None,
    patch_fill_value: float = 0.0,
    connectivity_2d: int = 8,
    batch_size: int = 8,
    lesion_typer: LesionTyper | None = None,
    typer_grid: FeatureGrid | None = None,
    typer_study: StudyHU | None = None,
) -> CascadeResult:
    """Run steps 2-9 of the cascade on one study.

    ``patch_channels`` are the (Z, Y, X) image channels the patch model expects; by default the HU
    volumes of the phases present in the canonical order NC, AP, VP, DP. Voxels outside the liver
    of each patch are set to ``patch_fill_value``. With a ``lesion_typer`` the lesions kept by
    reclassification are judged again (:mod:`pipeline.lesion_typer`): those it calls "not a lesion"
    are dropped, the others take the type it gives them; ``typer_grid`` is the grid the typer
    was trained on, when it may differ from `geometry` (:mod:`pipeline.typer_grid`), and
    ``typer_study`` the study's own registered phases, which a typer grid that reads the study's HU
    needs.
    """
    _check_inputs(probabilities, hu_by_phase, geometry)
    timings: dict[str, float] = {}
    decisions: list[Decision] = []
    base_f, high_f = config.sensitivity_factors[0], config.sensitivity_factors[-1]

    t0 = time.perf_counter()
    multi = sensitivity_label_maps(probabilities, config)
    base_labels, high_labels = multi.label_maps[base_f], multi.label_maps[high_f]
    timings["sensitivity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hu = {Phase(p): v for p, v in hu_by_phase.items()}
    base = seg2det(base_labels, geometry, hu, connectivity_2d=connectivity_2d,
                   min_volume_ml=config.min_lesion_volume_ml, sensitivities=(base_f,))  # fmt: skip
    high = seg2det(high_labels, geometry, hu, connectivity_2d=connectivity_2d,
                   min_volume_ml=config.min_lesion_volume_ml, sensitivities=(high_f,))  # fmt: skip
    timings["seg2det_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcomes: dict[str, list[ReclassifyOutcome]] = {}
    results: dict[str, ReclassifyResult] = {}
    if patch_model is None:
        base_recls, high_recls = list(base), list(high)
        decisions.append(Decision("reclassify", "study", "skipped", "no patch model: lesions kept as detected"))
    else:
        channels = list(patch_channels) if patch_channels is not None else [hu[p] for p in PHASE_ORDER if p in hu]
        if not channels and (base or high):
            raise ValueError("reclassification needs image channels: give hu_by_phase or patch_channels")
        settings = ShuffleSettings.from_config(config, fill_value=patch_fill_value)
        for name, lesions, labels in (("base", base, base_labels), ("high", high, high_labels)):
            if not lesions:
                results[name] = ReclassifyResult([], [], [])
            else:
                source = PatchSource(channels, labels)
                results[name] = reclassify(lesions, source, patch_model, config, geometry.voxel_volume_ml,
                                           settings=settings, batch_size=batch_size)  # fmt: skip
            outcomes[name] = results[name].outcomes
        base_recls, high_recls = results["base"].kept, results["high"].kept
        for name in ("base", "high"):
            result = results[name]
            decisions.append(
                Decision("reclassify", f"{name} sensitivity", f"kept {len(result.kept)}, dropped {len(result.dropped)}",
                         f"mean overlap >= {config.reclassify_threshold_ml} ml over "
                         f"{config.inference_patches_per_lesion} patches; > {config.reclassify_max_volume_ml} ml skip")
            )  # fmt: skip
    rescuing = lesion_typer is not None and config.rescue_malignant_probability > 0 and bool(results)
    # on another grid than the typer's (or for a typer reading the study's own HU), every lesion
    # the typer judges uses the HU moved once
    typed_lesions = [*base_recls, *high_recls, *(d for r in results.values() for d in r.dropped if rescuing)]
    moved_hu = (typer_hu(typer_grid, hu, geometry, typer_study, lesions=typed_lesions)
                if lesion_typer is not None and typer_grid is not None and typed_lesions else None)
    if rescuing:
        rescue_limits = {"base": config.rescue_max_volume_ml, "high": config.high_rescue_max_volume_ml}
        rescued = {name: _rescue_small_malignant(results[name].dropped, hu, labels, geometry, lesion_typer, config,
                                                typer_grid, moved_hu, rescue_limits[name])
                   for name, labels in (("base", base_labels), ("high", high_labels))}
        base_recls, high_recls = [*base_recls, *rescued["base"]], [*high_recls, *rescued["high"]]
        for name, kept in rescued.items():
            decisions.append(Decision("malignant rescue", f"{name} sensitivity",
                                      f"kept {len(kept)} of {len(results[name].dropped)} dropped by reclassification",
                                      f"lesion typer: malignant with probability >= "
                                      f"{config.rescue_malignant_probability:g}, volume <= "
                                      f"{rescue_limits[name]:g} ml"))
    if lesion_typer is not None:
        # The high-sensitivity set must not miss: there the typer only types (an infinite
        # sensitivity never drops); what it drops at base sensitivity alone makes the joint
        # verdict uncertain instead of silently normal.
        base_typed = retype_lesions(base_recls, hu, base_labels, geometry, lesion_typer, sensitivity=base_f,
                                    feature_grid=typer_grid, moved_hu=moved_hu)
        high_typed = retype_lesions(high_recls, hu, high_labels, geometry, lesion_typer, sensitivity=math.inf,
                                    feature_grid=typer_grid, moved_hu=moved_hu)
        base_recls, high_recls = base_typed.kept, high_typed.kept
        for name, typed in (("base", base_typed), ("high", high_typed)):
            decisions.append(Decision("lesion typing", f"{name} sensitivity",
                                      f"typed {len(typed.kept)}, dropped {len(typed.dropped)} as not a lesion",
                                      "lesion typer on enhancement features (docs/models.md)"))
    if config.high_fnh_needs_delayed_phase and Phase.DP not in hu_by_phase:
        high_recls, read_as_hcc = fnh_like_read_as_hcc(high_recls)
        decisions.append(Decision("FNH-like without a delayed phase", "high sensitivity",
                                  f"read {read_as_hcc} FNH-like lesion(s) as HCC",
                                  "no delayed phase: washout cannot be excluded (docs/cascade.md)"))
    timings["reclassify_s"] = time.perf_counter() - t0

    match = match_sensitivities(base_recls, high_recls)
    reported = _mark_reported(high_recls, match, base_f, high_f)
    class_base_recls = classify_patient(base_recls)
    class_high_recls = classify_patient(high_recls)
    organ_labels = np.where(base_labels >= int(Label.LIVER), base_labels, 0).astype(np.uint8)
    logger.info(
        "cascade: base %d lesions (%d after reclassification), high %d (%d), classes %s / %s",
        len(base), len(base_recls), len(high), len(high_recls), class_base_recls.value, class_high_recls.value,
    )  # fmt: skip
    return CascadeResult(
        geometry=geometry,
        base_factor=base_f,
        high_factor=high_f,
        base_labels=base_labels,
        high_labels=high_labels,
        organ_labels=organ_labels,
        base=base,
        base_recls=base_recls,
        high=high,
        high_recls=high_recls,
        reported=reported,
        reclassified=patch_model is not None,
        class_base=classify_patient(base),
        class_base_recls=class_base_recls,
        class_high_recls=class_high_recls,
        verdict=joint_verdict(class_base_recls, class_high_recls),
        livermax=multi.livermax,
        sensitivity_match=match,
        reclassify_outcomes=outcomes,
        decisions=decisions,
        timings_s=timings,
    )
