"""Scanner vendors of the phantom and the per-study scanner settings drawn from the seed:
manufacturer, model, kernel, pixel encoding, SeriesDescription style and language, exposure,
contrast agent, acquisition timing and synthetic patient demographics."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from pipeline.types import PHASE_ORDER, Phase


@dataclass(frozen=True)
class VendorProfile:
    """How one manufacturer's scanners encode and name a series."""

    key: str
    manufacturer: str
    models: tuple[str, ...]
    software: tuple[str, ...]
    kernels: tuple[tuple[str, float], ...]  # (ConvolutionKernel, in-plane blur FWHM mm)
    signed: bool
    bits_stored: int
    padding_value: int | None  # stored value outside the reconstruction circle, if padded
    styles: tuple[tuple[str, str, str, str], ...]  # SeriesDescription templates NC, AP, VP, DP
    protocol_names: tuple[str, ...]
    study_descriptions: tuple[str, ...]
    series_numbers: tuple[int, int, int, int]
    windows: tuple[tuple[float, ...], tuple[float, ...]]
    source_to_detector_mm: float
    source_to_patient_mm: float


VENDORS: tuple[VendorProfile, ...] = (
    VendorProfile(
        key="GE",
        manufacturer="GE MEDICAL SYSTEMS",
        models=("Revolution CT", "LightSpeed VCT", "Discovery CT750 HD", "Revolution EVO"),
        software=("revo_ct_22bc.50", "gmp_vct.42", "dm_ct750_hd.62"),
        kernels=(("STANDARD", 1.0), ("SOFT", 1.15), ("DETAIL", 0.75)),
        signed=True,
        bits_stored=16,
        padding_value=-2000,
        styles=(
            ("NON CON {t}mm", "ARTERIAL {t}mm", "PORTAL VENOUS {t}mm", "DELAYED 3 MIN {t}mm"),
            ("Pre Contrast {t}mm {k}", "Art Liver {t}mm {k}", "PV Abd {t}mm {k}", "Delay 180s {t}mm {k}"),
            ("WO {t}mm", "ART PHASE {t}mm", "VENOUS {t}mm", "EQUILIBRIUM {t}mm"),
        ),
        protocol_names=("4 PHASE LIVER", "5.1 LIVER TRIPLE PHASE", "ABD LIVER MASS"),
        study_descriptions=("CT ABDOMEN WO W CONTRAST", "CT LIVER 4 PHASE"),
        series_numbers=(2, 3, 4, 5),
        windows=((40.0,), (400.0,)),
        source_to_detector_mm=949.075,
        source_to_patient_mm=541.0,
    ),
    VendorProfile(
        key="SIEMENS",
        manufacturer="SIEMENS",
        models=("SOMATOM Definition AS+", "SOMATOM Force", "SOMATOM Definition Edge", "SOMATOM go.Top"),
        software=("syngo CT VA48A", "syngo CT VB20A", "syngo CT VA62A"),
        kernels=(("B30f", 1.05), ("I30f", 1.0), ("Br40d", 0.9), ("B31f", 1.0)),
        signed=False,
        bits_stored=12,
        padding_value=None,
        styles=(
            ("LEBER NATIV {t} {k}", "LEBER ARTERIELL {t} {k}", "LEBER PORTALVENOES {t} {k}", "LEBER SPAET {t} {k}"),
            ("Abdomen Sans IV {t} {k}", "Abdomen Arteriel {t} {k}", "Abdomen Portal {t} {k}", "Abdomen Tardif {t} {k}"),
            ("Abdomen Native {t} {k}", "Abdomen Arterial {t} {k}", "Abdomen PV {t} {k}", "Abdomen Delayed {t} {k}"),
        ),
        protocol_names=("Leber 4-Phasen", "Foie 4 temps", "Liver_4Phase"),
        study_descriptions=("Abdomen^Leber", "CT Abdomen", "TDM ABDOMINO-PELVIEN"),
        series_numbers=(2, 4, 6, 8),
        windows=((40.0, 60.0), (400.0, 360.0)),
        source_to_detector_mm=1085.6,
        source_to_patient_mm=595.0,
    ),
    VendorProfile(
        key="PHILIPS",
        manufacturer="Philips",
        models=("Brilliance 64", "IQon - Spectral CT", "Ingenuity CT", "iCT 256"),
        software=("4.1.6", "5.0.1", "3.2.2"),
        kernels=(("B", 1.05), ("C", 0.95), ("A", 1.2)),
        signed=False,
        bits_stored=12,
        padding_value=None,
        styles=(
            ("Non Contrast {t}mm", "Arterial {t}mm", "Portal venous {t}mm", "Delayed 3 min {t}mm"),
            ("Blanco {t}mm", "Arterieel {t}mm", "Portaal veneus {t}mm", "Laat 3 min {t}mm"),
        ),
        protocol_names=("Liver 4 phase", "Lever 4 fasen"),
        study_descriptions=("CT Abdomen", "CT Lever"),
        series_numbers=(201, 301, 401, 501),
        windows=((40.0,), (350.0,)),
        source_to_detector_mm=1040.0,
        source_to_patient_mm=570.0,
    ),
    VendorProfile(
        key="CANON",
        manufacturer="CANON_MEC",
        models=("Aquilion ONE", "Aquilion Prime SP", "Aquilion Lightning"),
        software=("V10.6SP0003", "V8.9ER005"),
        kernels=(("FC08", 1.05), ("FC18", 0.95), ("FC03", 1.15)),
        signed=True,
        bits_stored=16,
        padding_value=None,
        styles=(
            ("Abd NC {t} {k}", "Abd ART {t} {k}", "Abd PVP {t} {k}", "Abd DELAY {t} {k}"),
            ("ABD SIN CONTRASTE {t}", "ABD ARTERIAL {t}", "ABD PORTAL {t}", "ABD TARDIA {t}"),
        ),
        protocol_names=("Liver 4 Phase", "HIGADO 4 FASES"),
        study_descriptions=("CT ABDOMEN", "TC ABDOMEN"),
        series_numbers=(3, 4, 5, 6),
        windows=((40.0,), (350.0,)),
        source_to_detector_mm=1072.0,
        source_to_patient_mm=600.0,
    ),
)

CONTRAST_AGENTS = ("Omnipaque 350", "Ultravist 370", "Visipaque 320", "Iomeron 400", "Optiray 350", "Xenetix 350")


@dataclass(frozen=True)
class ScannerSettings:
    """The scanner, protocol and timing of one phantom study (drawn from the seed)."""

    vendor: VendorProfile
    model: str
    software: str
    kernel: str
    psf_mm: float
    style: int
    protocol_name: str
    study_description: str
    kvp: float
    tube_current_ma: int
    exposure_time_ms: int
    ctdi_vol_mgy: float
    table_height_mm: float
    contrast_agent: str
    contrast_volume_ml: float
    contrast_flow_ml_s: float
    study_datetime: dt.datetime
    acquisition_offsets_s: tuple[float, float, float, float]  # NC, AP, VP, DP from the NC start
    bolus_start_s: float
    seconds_per_slice: float
    patient_sex: str
    patient_birth_date: dt.date
    patient_weight_kg: float
    patient_size_m: float
    accession_number: str
    station_name: str
    device_serial: str


def sample_scanner(rng: np.random.Generator) -> ScannerSettings:
    """Draw vendor, model, kernel, naming style, exposure, timing and synthetic patient data."""
    vendor = VENDORS[int(rng.integers(0, len(VENDORS)))]
    kernel, psf = vendor.kernels[int(rng.integers(0, len(vendor.kernels)))]
    study_dt = dt.datetime(2023, 1, 2, 7, 0, 0) + dt.timedelta(
        days=int(rng.integers(0, 900)), seconds=int(rng.integers(0, 10 * 3600))
    )
    age_years = int(rng.integers(35, 86))
    birth = study_dt.date() - dt.timedelta(days=int(age_years * 365.25 + rng.integers(0, 365)))
    sex = "M" if rng.uniform() < 0.55 else "F"
    size = float(rng.uniform(1.55, 1.92))
    return ScannerSettings(
        vendor=vendor,
        model=vendor.models[int(rng.integers(0, len(vendor.models)))],
        software=vendor.software[int(rng.integers(0, len(vendor.software)))],
        kernel=kernel,
        psf_mm=float(psf * rng.uniform(0.9, 1.1)),
        style=int(rng.integers(0, len(vendor.styles))),
        protocol_name=vendor.protocol_names[int(rng.integers(0, len(vendor.protocol_names)))],
        study_description=vendor.study_descriptions[int(rng.integers(0, len(vendor.study_descriptions)))],
        kvp=float(rng.choice([100.0, 120.0, 120.0])),
        tube_current_ma=int(rng.integers(150, 420)),
        exposure_time_ms=int(rng.choice([500, 750, 1000])),
        ctdi_vol_mgy=round(float(rng.uniform(7.0, 18.0)), 2),
        table_height_mm=round(float(rng.uniform(140.0, 190.0)), 1),
        contrast_agent=CONTRAST_AGENTS[int(rng.integers(0, len(CONTRAST_AGENTS)))],
        contrast_volume_ml=float(rng.choice([80.0, 90.0, 100.0, 120.0])),
        contrast_flow_ml_s=float(rng.choice([3.0, 3.5, 4.0, 5.0])),
        study_datetime=study_dt,
        acquisition_offsets_s=(
            0.0,
            float(rng.uniform(25, 38)),
            float(rng.uniform(62, 82)),
            float(rng.uniform(165, 215)),
        ),
        bolus_start_s=float(rng.uniform(0.0, 5.0)),
        seconds_per_slice=float(rng.uniform(0.03, 0.09)),
        patient_sex=sex,
        patient_birth_date=birth,
        patient_weight_kg=round(float(rng.uniform(18.5, 33.0) * size * size), 1),
        patient_size_m=round(size, 2),
        accession_number="".join(str(int(d)) for d in rng.integers(0, 10, 8)),
        station_name=f"CT{int(rng.integers(1, 20)):02d}",
        device_serial=str(int(rng.integers(10000, 99999))),
    )


def series_description(settings: ScannerSettings, phase: Phase, thickness_mm: float) -> str:
    """Vendor- and language-styled SeriesDescription of a phase."""
    if settings.vendor.key == "GE":
        t = f"{thickness_mm:g}"
    elif settings.vendor.key == "PHILIPS":
        t = f"{thickness_mm:.2f}".rstrip("0").rstrip(".") if thickness_mm % 1 else f"{thickness_mm:.0f}"
    else:
        t = f"{thickness_mm:.1f}"
    template = settings.vendor.styles[settings.style][PHASE_ORDER.index(phase)]
    return template.format(t=t, k=settings.kernel)[:64]
