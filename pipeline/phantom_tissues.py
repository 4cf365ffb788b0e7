"""Tissue attenuation of the phantom per contrast phase, and its per-study randomisation.

Values are Hounsfield units for the phases in ``PHASE_ORDER`` (NC, AP, VP, DP). A study draws
an overall enhancement scale per phase (contrast dose, cardiac output), an arterial timing (early
or late arterial phase) and a jitter per tissue, so the same tissue differs between patients by
roughly 10-15 % of its enhancement while keeping the textbook order of the phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.types import PHASE_ORDER, Phase

#: Baseline attenuation (NC, AP, VP, DP) in HU before per-study randomisation.
BASE_TISSUE_HU: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000.0, -1000.0, -1000.0, -1000.0),
    "lung": (-860.0, -855.0, -855.0, -855.0),
    "fat": (-105.0, -104.0, -103.0, -103.0),
    "visceral_fat": (-95.0, -93.0, -92.0, -92.0),
    "skin": (30.0, 40.0, 50.0, 45.0),
    "muscle": (50.0, 58.0, 66.0, 62.0),
    "bone_cortical": (1000.0, 1000.0, 1000.0, 1000.0),
    "bone_cancellous": (200.0, 205.0, 210.0, 208.0),
    "bone_posterior": (450.0, 452.0, 455.0, 455.0),
    "rib": (420.0, 420.0, 422.0, 422.0),
    "disc": (85.0, 88.0, 92.0, 92.0),
    "csf": (12.0, 12.0, 12.0, 12.0),
    "liver": (55.0, 70.0, 105.0, 90.0),
    "spleen": (45.0, 110.0, 120.0, 100.0),
    "pancreas": (45.0, 115.0, 100.0, 80.0),
    "kidney_cortex": (32.0, 180.0, 175.0, 135.0),
    "kidney_medulla": (32.0, 70.0, 170.0, 140.0),
    "urine": (8.0, 8.0, 12.0, 250.0),
    "aorta": (40.0, 280.0, 150.0, 120.0),
    "artery": (40.0, 270.0, 150.0, 120.0),
    "heart_blood": (40.0, 240.0, 155.0, 122.0),
    "myocardium": (45.0, 110.0, 110.0, 95.0),
    "ivc": (40.0, 75.0, 150.0, 122.0),
    "portal": (40.0, 120.0, 170.0, 130.0),
    "hepatic_vein": (40.0, 55.0, 160.0, 125.0),
    "bile": (8.0, 8.0, 8.0, 8.0),
    "gb_wall": (40.0, 70.0, 90.0, 80.0),
    "gi_wall": (45.0, 95.0, 110.0, 95.0),
    "gi_fluid": (12.0, 12.0, 12.0, 12.0),
    "stool": (-120.0, -120.0, -120.0, -120.0),
    "table_shell": (250.0, 250.0, 250.0, 250.0),
    "table_foam": (-920.0, -920.0, -920.0, -920.0),
    "cyst": (5.0, 5.0, 5.0, 5.0),
}

#: Tissues whose arterial enhancement follows portal inflow (scaled by the arterial timing).
_PORTAL_TIMED = ("liver", "portal", "hepatic_vein", "ivc", "kidney_medulla", "spleen")
#: Tissues whose arterial enhancement is the first pass (higher in early arterial phases).
_ARTERIAL_TIMED = ("aorta", "artery", "heart_blood")
#: Tissues that do not enhance and only get a small NC jitter.
_NON_ENHANCING = (
    "air",
    "lung",
    "fat",
    "visceral_fat",
    "bone_cortical",
    "csf",
    "bile",
    "gi_fluid",
    "stool",
    "table_shell",
    "table_foam",
    "cyst",
)


def phase_index(phase: Phase) -> int:
    """Position of a phase in ``PHASE_ORDER`` (the column of the HU tables)."""
    return PHASE_ORDER.index(Phase(phase))


@dataclass(frozen=True)
class ContrastParams:
    """Per-study contrast behaviour: enhancement scale per phase and arterial timing in [0, 1]
    (0 early arterial, 1 late arterial)."""

    phase_scale: tuple[float, float, float, float]
    arterial_timing: float
    oral_contrast: bool


@dataclass(frozen=True)
class TissueTable:
    """Randomised HU of every tissue for one study, (NC, AP, VP, DP) each."""

    values: dict[str, tuple[float, float, float, float]]

    def hu(self, tissue: str, phase_i: int) -> float:
        """HU of `tissue` in the phase at position `phase_i` of PHASE_ORDER."""
        return self.values[tissue][phase_i]

    def row(self, tissue: str) -> np.ndarray:
        return np.asarray(self.values[tissue], dtype=np.float64)


def sample_contrast(rng: np.random.Generator) -> ContrastParams:
    """Draw the study's contrast dose/timing parameters."""
    return ContrastParams(
        phase_scale=(
            1.0,
            float(rng.uniform(0.82, 1.18)),
            float(rng.uniform(0.86, 1.14)),
            float(rng.uniform(0.86, 1.14)),
        ),
        arterial_timing=float(rng.uniform(0.0, 1.0)),
        oral_contrast=bool(rng.uniform() < 0.15),
    )


def sample_tissue_table(rng: np.random.Generator, contrast: ContrastParams) -> TissueTable:
    """Randomise the baseline HU table: NC jitter, scaled and jittered enhancement per phase."""
    values: dict[str, tuple[float, float, float, float]] = {}
    for name, base in BASE_TISSUE_HU.items():
        row = np.asarray(base, dtype=np.float64)
        if name in _NON_ENHANCING:
            jitter = rng.uniform(-4.0, 4.0) if abs(row[0]) < 200 else rng.uniform(-15.0, 15.0)
            if name == "air":
                jitter = 0.0
            values[name] = tuple(float(v) for v in row + jitter)
            continue
        nc = row[0] + rng.uniform(-5.0, 5.0)
        if name == "liver":
            nc = rng.uniform(46.0, 64.0)  # from mild steatosis to normal
        elif name == "bone_cancellous":
            nc = rng.uniform(130.0, 260.0)  # bone density varies with age
        enh = (row - row[0]) * np.asarray(contrast.phase_scale) * rng.uniform(0.9, 1.1)
        if name in _PORTAL_TIMED:
            enh[1] *= 0.75 + 0.5 * contrast.arterial_timing
        elif name in _ARTERIAL_TIMED:
            enh[1] *= 1.12 - 0.24 * contrast.arterial_timing
        if name == "urine":
            enh[3] *= rng.uniform(0.5, 2.0)  # excretion varies a lot
        values[name] = tuple(float(v) for v in nc + enh)
    if contrast.oral_contrast:
        oral = float(rng.uniform(200.0, 400.0))
        values["gi_fluid"] = (oral, oral, oral, oral)
    return TissueTable(values)
