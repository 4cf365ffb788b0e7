"""DICOM Segmentation (SEG) of the findings: one segment per lesion and per organ/vessel present.

The reference SEG (`build_seg`) is drawn on the venous-phase series the masks were computed on.
Viewers show a SEG only over the series it references, so `build_phase_segs` also draws the
masks on the other phases through a caller-supplied resampler (reference grid -> phase grid).

Segment numbers: lesions first (in lesion id order), then the organs/vessels present (label
order 7..13). BINARY keeps overlapping segments (e.g. a lesion inside the liver mask) as they
are; LABELMAP cannot represent overlap, so lesions take priority over organs there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_sr import codes
from dicom_sr.geometry import (
    geometry_from_datasets,
    lesion_stats,
    mask_stats,
    order_sources,
)
from dicom_sr.types import AlgorithmInfo, ResultsError, ResultUIDs, SegmentStats
from pipeline.types import ORGAN_LABELS, Findings, Lesion, Phase, VolumeGeometry

logger = logging.getLogger(__name__)

PRODUCT_NAME = "livernode"
SEG_SERIES_DESCRIPTION = "livernode lesions - RESEARCH USE ONLY, not for diagnosis"
SEG_CONTENT_LABEL = "LIVERNODE"
SEG_CONTENT_DESCRIPTION = "Liver lesions and organs by livernode (research use only)"
#: Series numbers of the SEG per phase (the SR uses 9801).
SEG_SERIES_NUMBER: Mapping[Phase, int] = MappingProxyType(
    {Phase.VP: 9701, Phase.AP: 9702, Phase.NC: 9703, Phase.DP: 9704}
)

#: Reference grid mask (bool, z y x) -> mask on a phase's grid (bool, that phase's z y x).
Resampler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SegmentSpec:
    """One planned segment: its number, what it is, and its identity."""

    number: int
    label: str
    coding: codes.SegmentCoding
    tracking_id: str
    tracking_uid: str
    lesion_id: int | None = None
    organ_label: int | None = None

    @property
    def is_lesion(self) -> bool:
        return self.lesion_id is not None


@dataclass
class PhaseSeg:
    """A SEG drawn on one phase, with the grid of that phase and the per-segment statistics of
    the masks it encodes (for the output gate)."""

    phase: Phase
    segmentation: hd.seg.Segmentation
    geometry: VolumeGeometry
    expected: dict[int, SegmentStats]


def organs_present(findings: Findings) -> list[int]:
    """Organ/vessel labels (7..13) with at least one voxel, in label order."""
    counts = np.bincount(findings.organ_labels.ravel(), minlength=max(ORGAN_LABELS) + 1)
    return [label for label in ORGAN_LABELS if counts[label] > 0]


def plan_segments(findings: Findings, uids: ResultUIDs | None = None) -> list[SegmentSpec]:
    """Number and name the segments: lesions (by id), then organs present (by label).

    Without `uids` the tracking UIDs are left empty (enough to know the numbering).
    """
    specs: list[SegmentSpec] = []
    for lesion in sorted(findings.lesions, key=lambda item: item.lesion_id):
        coding = codes.lesion_coding(lesion.lesion_type)
        specs.append(
            SegmentSpec(
                number=len(specs) + 1,
                label=f"{lesion.lesion_type.display_name} {lesion.lesion_id}",
                coding=coding,
                tracking_id=lesion_tracking_id(lesion),
                tracking_uid=uids.lesion_uid(lesion.lesion_id) if uids else "",
                lesion_id=lesion.lesion_id,
            )
        )
    for label in organs_present(findings):
        coding = codes.organ_coding(label)
        specs.append(
            SegmentSpec(
                number=len(specs) + 1,
                label=coding.name,
                coding=coding,
                tracking_id=f"livernode {coding.name.lower()}",
                tracking_uid=uids.organ_uid(label) if uids else "",
                organ_label=label,
            )
        )
    return specs


def lesion_tracking_id(lesion: Lesion) -> str:
    """Tracking Identifier of a lesion, shared by its SEG segment and SR groups."""
    return f"livernode lesion {lesion.lesion_id} ({lesion.lesion_type.display_name})"


# --- masks ---------------------------------------------------------------------------------------


def _label_dtype(count: int) -> type:
    return np.uint8 if count < 256 else np.uint16


def _reference_pixel_array(
    findings: Findings, specs: Sequence[SegmentSpec], labelmap: bool
) -> np.ndarray:
    """Pixel array on the reference grid: a (z, y, x) label map when segments do not overlap
    (or for LABELMAP, lesions overwriting organs), else (z, y, x, segments) stacked bool."""
    shape = findings.geometry.shape
    if findings.organ_labels.shape != shape or findings.organ_labels.dtype != np.uint8:
        raise ResultsError(
            f"findings.organ_labels: {findings.organ_labels.dtype} {findings.organ_labels.shape}, "
            f"expected uint8 {shape}"
        )
    dtype = _label_dtype(len(specs))
    lut = np.zeros(256, dtype=dtype)
    for spec in specs:
        if spec.organ_label is not None:
            lut[spec.organ_label] = spec.number
    labels = np.take(lut, findings.organ_labels)
    lesions = {lesion.lesion_id: lesion for lesion in findings.lesions}
    for lesion in lesions.values():
        _check_lesion(lesion, shape)
    overlap = False
    for spec in specs:
        if spec.lesion_id is None:
            continue
        lesion = lesions[spec.lesion_id]
        view = labels[lesion.bbox.slices]
        if not labelmap and bool(np.any(view[lesion.mask] != 0)):
            overlap = True
            break
        view[lesion.mask] = spec.number
    if not overlap:
        return labels
    logger.debug("segments overlap: encoding %d segments as stacked binary masks", len(specs))
    # Segment-major memory layout: highdicom reads one (segment, plane) frame at a time, which
    # is a contiguous block here (about 20 times faster than a (z, y, x, segment) array).
    stacked = np.zeros((len(specs), *shape), dtype=bool)
    for spec in specs:
        if spec.organ_label is not None:
            np.equal(findings.organ_labels, spec.organ_label, out=stacked[spec.number - 1])
        else:
            lesion = lesions[spec.lesion_id]  # type: ignore[index]
            stacked[spec.number - 1][lesion.bbox.slices] = lesion.mask
    return np.moveaxis(stacked, 0, -1)


def _check_lesion(lesion: Lesion, shape: tuple[int, int, int]) -> None:
    box = lesion.bbox
    if lesion.mask.shape != box.shape:
        raise ResultsError(
            f"lesion {lesion.lesion_id}: mask shape {lesion.mask.shape} != bbox {box.shape}"
        )
    if min(box.z0, box.y0, box.x0) < 0 or box.z1 > shape[0] or box.y1 > shape[1] or box.x1 > shape[2]:
        raise ResultsError(f"lesion {lesion.lesion_id}: bbox {box} outside the grid {shape}")
    if not lesion.mask.any():
        raise ResultsError(f"lesion {lesion.lesion_id}: empty mask")


def _assemble(
    masks: Sequence[tuple[SegmentSpec, np.ndarray]], shape: tuple[int, ...], labelmap: bool
) -> np.ndarray:
    """Pixel array from full masks on one grid (organs painted first, lesions on top)."""
    ordered = sorted(masks, key=lambda item: (item[0].is_lesion, item[0].number))
    labels = np.zeros(shape, dtype=_label_dtype(len(masks)))
    for spec, mask in ordered:
        if not labelmap and bool(np.any(labels[mask] != 0)):
            stacked = np.zeros((len(masks), *shape), dtype=bool)  # segment-major, see above
            for other, other_mask in masks:
                stacked[other.number - 1] = other_mask
            return np.moveaxis(stacked, 0, -1)
        labels[mask] = spec.number
    return labels


def _stats_from_pixel_array(
    pixel_array: np.ndarray, geometry: VolumeGeometry, numbers: Iterable[int]
) -> dict[int, SegmentStats]:
    """Statistics of segments encoded in a label map (z, y, x) or a stacked array, plane by
    plane (only labelled pixels are visited)."""
    numbers = list(numbers)
    if pixel_array.ndim == 4:
        return {n: mask_stats(pixel_array[..., n - 1], geometry) for n in numbers}
    if not numbers:
        return {}
    top = max(numbers) + 1
    n_z, _, n_x = pixel_array.shape
    per_plane = np.zeros((n_z, top), dtype=np.int64)
    index_sums = np.zeros((top, 3), dtype=np.float64)  # sums of z, y, x indices per label
    for z in range(n_z):
        flat = pixel_array[z].ravel()
        where = np.flatnonzero(flat)
        if where.size == 0:
            continue
        values = flat[where].astype(np.int64)
        keep = values < top
        where, values = where[keep], values[keep]
        counts = np.bincount(values, minlength=top)
        per_plane[z] = counts
        index_sums[:, 0] += counts * z
        index_sums[:, 1] += np.bincount(values, weights=where // n_x, minlength=top)
        index_sums[:, 2] += np.bincount(values, weights=where % n_x, minlength=top)
    stats = {}
    for n in numbers:
        planes = tuple(int(v) for v in per_plane[:, n])
        count = int(sum(planes))
        centroid = None
        if count:
            point = geometry.index_to_patient(index_sums[n] / count)[0]
            centroid = (float(point[0]), float(point[1]), float(point[2]))
        stats[n] = SegmentStats(count, centroid, planes)
    return stats


def segment_stats(
    findings: Findings, segmentation_type: str = "BINARY"
) -> dict[int, SegmentStats]:
    """Expected voxel count and centroid of every segment of `build_seg`'s SEG, computed from
    the findings (lesion crops and the organ label map), for the output gate."""
    labelmap = _segmentation_type(segmentation_type) == hd.seg.SegmentationTypeValues.LABELMAP
    specs = plan_segments(findings)
    geometry = findings.geometry
    if labelmap:
        pixel_array = _reference_pixel_array(findings, specs, labelmap=True)
        return _stats_from_pixel_array(pixel_array, geometry, [s.number for s in specs])
    organ_specs = [s for s in specs if s.organ_label is not None]
    lut = np.zeros(256, dtype=np.uint8)
    for spec in organ_specs:
        lut[spec.organ_label] = spec.number
    stats = _stats_from_pixel_array(lut[findings.organ_labels], geometry,
                                    [s.number for s in organ_specs])
    lesions = {lesion.lesion_id: lesion for lesion in findings.lesions}
    for spec in specs:
        if spec.lesion_id is not None:
            stats[spec.number] = lesion_stats(lesions[spec.lesion_id], geometry)
    return stats


def segment_masks(findings: Findings, segmentation_type: str = "BINARY") -> dict[int, np.ndarray]:
    """Full-grid bool mask of every segment of `build_seg`'s SEG (memory: one grid per segment;
    meant for tests and small studies; the gate can use `segment_stats` instead)."""
    labelmap = _segmentation_type(segmentation_type) == hd.seg.SegmentationTypeValues.LABELMAP
    specs = plan_segments(findings)
    pixel_array = _reference_pixel_array(findings, specs, labelmap=labelmap)
    if pixel_array.ndim == 4:
        return {s.number: pixel_array[..., s.number - 1].copy() for s in specs}
    return {s.number: pixel_array == s.number for s in specs}


# --- SEG construction ------------------------------------------------------------------------


def _segmentation_type(value: str | hd.seg.SegmentationTypeValues) -> hd.seg.SegmentationTypeValues:
    try:
        seg_type = hd.seg.SegmentationTypeValues(value)
    except ValueError:
        raise ResultsError(f"segmentation_type: expected BINARY or LABELMAP, got {value!r}") from None
    if seg_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        raise ResultsError("segmentation_type: FRACTIONAL is not produced by livernode")
    return seg_type


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """Segmentation Algorithm Identification of every segment."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.concept(codes.ALGORITHM_FAMILY),
        version=algorithm.version,
        source=algorithm.manufacturer,
        parameters=dict(sorted(algorithm.parameters.items())) or None,
    )


def contributing_equipment(algorithm: AlgorithmInfo, device_uid: str) -> hd.ContributingEquipment:
    """IHE AIR "processing algorithm" item: the AI model as Processing Equipment, with its
    name, version and Device UID (DCM has no "Processing Algorithm" purpose code; CID 7005's
    "Processing Equipment" is used)."""
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=codes.concept(codes.PROCESSING_EQUIPMENT),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.device_serial_number,
        contribution_description="AI model that produced these results (research use only)",
    )
    item.DeviceUID = device_uid
    return item


def _segment_description(spec: SegmentSpec, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    coding = spec.coding
    description = hd.seg.SegmentDescription(
        segment_number=spec.number,
        segment_label=spec.label,
        segmented_property_category=codes.concept(coding.category),
        segmented_property_type=codes.concept(coding.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(algorithm),
        tracking_uid=spec.tracking_uid,
        tracking_id=spec.tracking_id,
        anatomic_regions=[codes.concept(coding.anatomic_region)] if coding.anatomic_region else None,
        display_color=coding.cielab,
    )
    if coding.type_modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            codes.concept(coding.type_modifier)
        ]
    return description


def _make_segmentation(
    sources: Sequence[Dataset],
    pixel_array: np.ndarray,
    specs: Sequence[SegmentSpec],
    seg_type: hd.seg.SegmentationTypeValues,
    phase: Phase,
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
    transfer_syntax_uid: str,
) -> hd.seg.Segmentation:
    target = uids.seg_for(phase)
    description = SEG_SERIES_DESCRIPTION
    if phase != Phase.VP:
        description = f"livernode lesions {phase.value} - RESEARCH USE ONLY, not for diagnosis"
    segmentation = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=[_segment_description(spec, algorithm) for spec in specs],
        series_instance_uid=target.series_uid,
        series_number=SEG_SERIES_NUMBER[phase],
        sop_instance_uid=target.instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=PRODUCT_NAME,
        software_versions=algorithm.software_version,
        device_serial_number=algorithm.device_serial_number,
        content_label=SEG_CONTENT_LABEL,
        content_description=SEG_CONTENT_DESCRIPTION,
        series_description=description,
        omit_empty_frames=True,
        transfer_syntax_uid=transfer_syntax_uid,
        contributing_equipment=[contributing_equipment(algorithm, uids.device_uid)],
    )
    logger.info(
        "built %s SEG %s on series %s: %d segments, %d frames",
        seg_type.value, target.instance_uid, sources[0].SeriesInstanceUID, len(specs),
        int(segmentation.NumberOfFrames),
    )
    return segmentation


def build_seg(
    findings: Findings,
    source_datasets: Sequence[Dataset],
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
    segmentation_type: str = "BINARY",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.seg.Segmentation:
    """The SEG of the findings on the reference (venous) series.

    source_datasets: the reference series' slices (any order; they are matched to the grid of
    `findings.geometry` by position and must cover it exactly). Empty frames are omitted.
    Raises ResultsError if there is nothing to segment or the inputs disagree.
    """
    seg_type = _segmentation_type(segmentation_type)
    specs = plan_segments(findings, uids)
    if not specs:
        raise ResultsError("findings: no lesion and no organ voxel, nothing to segment")
    sources = order_sources(source_datasets, findings.geometry)
    if sources[0].SeriesInstanceUID != findings.reference_series_uid:
        raise ResultsError(
            f"source_datasets: series {sources[0].SeriesInstanceUID} is not the reference "
            f"series {findings.reference_series_uid}"
        )
    labelmap = seg_type == hd.seg.SegmentationTypeValues.LABELMAP
    pixel_array = _reference_pixel_array(findings, specs, labelmap)
    if labelmap and any(s.is_lesion for s in specs):
        logger.debug("LABELMAP: lesions take priority over organs where they overlap")
    return _make_segmentation(sources, pixel_array, specs, seg_type, Phase.VP, uids, algorithm,
                              transfer_syntax_uid)


def build_phase_segs(
    findings: Findings,
    phase_sources: Mapping[Phase, Sequence[Dataset]],
    resamplers: Mapping[Phase, Resampler],
    uids: ResultUIDs,
    algorithm: AlgorithmInfo,
    segmentation_type: str = "BINARY",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> dict[Phase, PhaseSeg]:
    """One SEG per phase present, each referencing that phase's series.

    phase_sources: per phase, its slices in the z order of the grid the resampler returns.
    resamplers: per non-reference phase, reference-grid mask -> phase-grid mask (bool). The
    reference phase (VP) needs none: its SEG is `build_seg`'s.
    """
    seg_type = _segmentation_type(segmentation_type)
    labelmap = seg_type == hd.seg.SegmentationTypeValues.LABELMAP
    specs = plan_segments(findings, uids)
    if not specs:
        raise ResultsError("findings: no lesion and no organ voxel, nothing to segment")
    lesions = {lesion.lesion_id: lesion for lesion in findings.lesions}
    results: dict[Phase, PhaseSeg] = {}
    for phase, datasets in phase_sources.items():
        if phase == Phase.VP:
            seg = build_seg(findings, datasets, uids, algorithm, segmentation_type,
                            transfer_syntax_uid)
            results[phase] = PhaseSeg(phase, seg, findings.geometry,
                                      segment_stats(findings, segmentation_type))
            continue
        resample = resamplers.get(phase)
        if resample is None:
            raise ResultsError(f"resamplers: none for phase {phase.value}")
        geometry = geometry_from_datasets(datasets)
        masks = []
        for spec in specs:
            if spec.lesion_id is not None:
                reference_mask = lesions[spec.lesion_id].full_mask(findings.geometry.shape)
            else:
                reference_mask = findings.organ_labels == spec.organ_label
            mask = np.asarray(resample(reference_mask))
            if mask.shape != geometry.shape:
                raise ResultsError(
                    f"resamplers[{phase.value}]: returned shape {mask.shape}, phase grid is "
                    f"{geometry.shape}"
                )
            masks.append((spec, mask.astype(bool, copy=False)))
        pixel_array = _assemble(masks, geometry.shape, labelmap)
        expected = _stats_from_pixel_array(pixel_array, geometry, [s.number for s in specs])
        seg = _make_segmentation(datasets, pixel_array, specs, seg_type, phase, uids, algorithm,
                                 transfer_syntax_uid)
        results[phase] = PhaseSeg(phase, seg, geometry, expected)
    return results


def segment_number_of_lesion(findings: Findings, lesion_id: int) -> int:
    """The SEG segment number of a lesion (lesions come first, in id order)."""
    for spec in plan_segments(findings):
        if spec.lesion_id == lesion_id:
            return spec.number
    raise ResultsError(f"lesion_id: no lesion {lesion_id} in the findings")


__all__ = [
    "PhaseSeg",
    "Resampler",
    "SegmentSpec",
    "build_phase_segs",
    "build_seg",
    "organs_present",
    "plan_segments",
    "segment_masks",
    "segment_number_of_lesion",
    "segment_stats",
]
