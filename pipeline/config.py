"""Configuration dataclasses owned by the pipeline.

Each is frozen and checks itself in ``__post_init__`` so an invalid value fails where it is made,
with a message naming the field. ``node.settings`` nests these under the YAML sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


@dataclass(frozen=True)
class CascadeConfig:
    """Parameters of the detection cascade (DESIGN section 3; defaults from the paper)."""

    #: lesion probability factors; the first is "base", the last "high" sensitivity.
    sensitivity_factors: tuple[float, ...] = (1.0, 4.0)
    #: hysteresis: a lesion found at factor f takes its outline from the map at f x this factor
    #: (pipeline.lesion_growth; 0 turns it off, values above 1 turn it on).
    lesion_growth_factor: float = 0.0
    #: lesions larger than this skip reclassification (kept as found).
    reclassify_max_volume_ml: float = 64.0
    #: a lesion whose mean overlap score is below this is dropped.
    reclassify_threshold_ml: float = 0.5
    #: optional second threshold as a fraction of the lesion's own volume (0 disables it).
    reclassify_relative_threshold: float = 0.0
    #: patches per lesion at inference (N in the paper).
    inference_patches_per_lesion: int = 10
    #: patches per lesion when generating training data.
    training_patches_per_lesion: int = 20
    #: patch size in voxels (z, y, x).
    patch_size_voxels: tuple[int, int, int] = (16, 128, 128)
    #: seed for patch placement, so a study gives the same result every run.
    seed: int = 0
    #: slices per slab when scaling/argmaxing probabilities (bounds peak memory).
    slab_slices: int = 32
    #: lesions under this volume are ignored by seg2det consumers (evaluation, reports).
    min_lesion_volume_ml: float = 0.0
    #: liver only where P(liver) + P(lesions) exceeds this, not merely where liver wins the argmax
    #: (pipeline.liver_region; 0 turns it off).
    liver_probability_threshold: float = 0.6
    #: liver voxels outside the largest connected liver-and-lesion region become background
    #: (pipeline.liver_region).
    keep_largest_liver_region: bool = True
    #: kept lesions take the type the model's lesion typer gives them, when the model has one
    #: (pipeline.lesion_typer); off: the type of reclassification's UNet_patch vote (the paper).
    lesion_typing: bool = True
    #: a lesion reclassification drops is kept when the lesion typer gives it at least this
    #: probability of being malignant (HCC + ICC + metastasis) and it is no larger than
    #: `rescue_max_volume_ml`: small lesions UNet_patch cannot judge (docs/cascade.md, "malignant
    #: rescue"); 0 turns it off. Needs a lesion typer and `lesion_typing`. 0.7 was chosen on the 48
    #: validation studies (docs/models.md, "Session 30").
    rescue_malignant_probability: float = 0.7
    #: the largest lesion (ml) the malignant rescue may keep.
    rescue_max_volume_ml: float = 2.0
    #: the same limit in the high-sensitivity set, where a rescued lesion the base set lacks makes
    #: the joint verdict uncertain instead of silently benign; 64 (= `reclassify_max_volume_ml`):
    #: any lesion reclassification judges (docs/cascade.md, "Malignant rescue"; docs/models.md,
    #: "Session 32").
    high_rescue_max_volume_ml: float = 64.0
    #: at high sensitivity a lesion typed FNH-like (Other) in a study without a delayed phase is
    #: read as HCC: without a delayed phase washout cannot be excluded, so such a call makes the
    #: joint verdict uncertain instead of certainly benign (docs/cascade.md, "FNH-like needs a
    #: delayed phase"; off by default: docs/models.md, "Session 32").
    high_fnh_needs_delayed_phase: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity_factors", tuple(float(f) for f in self.sensitivity_factors))
        object.__setattr__(self, "patch_size_voxels", tuple(int(v) for v in self.patch_size_voxels))
        _require(len(self.sensitivity_factors) >= 1, "sensitivity_factors", "give at least one factor")
        _require(0.0 <= self.liver_probability_threshold < 1.0, "liver_probability_threshold",
                 "must be at least 0 (off) and below 1")
        _require(all(f > 0 for f in self.sensitivity_factors), "sensitivity_factors", "factors must be > 0")
        _require(self.lesion_growth_factor == 0 or self.lesion_growth_factor > 1, "lesion_growth_factor",
                 "must be 0 (off) or above 1")
        _require(self.reclassify_max_volume_ml > 0, "reclassify_max_volume_ml", "must be > 0")
        _require(self.reclassify_threshold_ml >= 0, "reclassify_threshold_ml", "must be >= 0")
        _require(
            0.0 <= self.reclassify_relative_threshold <= 1.0,
            "reclassify_relative_threshold",
            "must be between 0 and 1",
        )
        _require(self.inference_patches_per_lesion >= 1, "inference_patches_per_lesion", "must be >= 1")
        _require(self.training_patches_per_lesion >= 1, "training_patches_per_lesion", "must be >= 1")
        _require(
            len(self.patch_size_voxels) == 3 and all(v >= 4 for v in self.patch_size_voxels),
            "patch_size_voxels",
            "must be three sizes (z, y, x) of at least 4 voxels",
        )
        _require(self.slab_slices >= 1, "slab_slices", "must be >= 1")
        _require(0.0 <= self.rescue_malignant_probability <= 1.0, "rescue_malignant_probability",
                 "must be between 0 (off) and 1")
        _require(self.rescue_max_volume_ml > 0, "rescue_max_volume_ml", "must be > 0")
        _require(self.high_rescue_max_volume_ml > 0, "high_rescue_max_volume_ml", "must be > 0")
        _require(self.min_lesion_volume_ml >= 0, "min_lesion_volume_ml", "must be >= 0")


@dataclass(frozen=True)
class PhantomConfig:
    """Defaults for synthetic studies made by ``livernode phantom``."""

    slices: int = 60
    slice_thickness_mm: float = 5.0
    rows: int = 512
    columns: int = 512
    phases: tuple[str, ...] = ("NC", "AP", "VP", "DP")
    lesions: bool = True
    feet_first: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(str(p) for p in self.phases))
        _require(8 <= self.slices <= 2000, "slices", "must be between 8 and 2000")
        _require(0.5 <= self.slice_thickness_mm <= 10.0, "slice_thickness_mm", "must be 0.5-10 mm")
        _require(64 <= self.rows <= 1024, "rows", "must be 64-1024")
        _require(64 <= self.columns <= 1024, "columns", "must be 64-1024")
        valid = {"NC", "AP", "VP", "DP"}
        _require(
            len(self.phases) >= 1 and set(self.phases) <= valid and len(set(self.phases)) == len(self.phases),
            "phases",
            f"must be distinct values from {sorted(valid)}",
        )


@dataclass(frozen=True)
class PipelineConfig:
    """All pipeline sections together."""

    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)


@dataclass(frozen=True)
class SeriesConfig:
    """How DICOM files become volumes (``pipeline.series``, docs/ingest.md)."""

    #: stacks with fewer slices than this are not volumes (localizers, bolus tracking, stray slices).
    min_slices: int = 8
    #: accept ImageType DERIVED/SECONDARY axial series as phase candidates (off: they are skipped).
    accept_derived: bool = False
    #: a stack whose slice normal is further than this from the patient's head-feet axis is not axial.
    max_axial_angle_deg: float = 45.0
    #: slice gaps within this fraction of the nominal spacing count as even (no resampling).
    even_spacing_tolerance: float = 0.02
    #: gaps deviating up to this fraction are resampled onto even spacing; more is refused.
    max_resample_deviation: float = 0.2
    #: a gap at least this many times the nominal spacing means missing slices (refused).
    missing_slice_gap_factor: float = 1.5
    #: slice positions off the slice normal by more than this angle mean gantry tilt (refused).
    gantry_tilt_tolerance_deg: float = 0.2
    #: slices whose AcquisitionTime differs by more than this belong to different acquisitions
    #: when a series must be split (duplicate positions).
    acquisition_gap_s: float = 5.0
    #: pixels equal to PixelPaddingValue become this HU.
    padding_hu: float = -1024.0
    #: reader threads when loading pixel data.
    threads: int = 2

    def __post_init__(self) -> None:
        _require(self.min_slices >= 2, "min_slices", "must be >= 2")
        _require(0.0 < self.max_axial_angle_deg <= 90.0, "max_axial_angle_deg", "must be in (0, 90]")
        _require(0.0 <= self.even_spacing_tolerance < 0.5, "even_spacing_tolerance", "must be in [0, 0.5)")
        _require(
            self.even_spacing_tolerance <= self.max_resample_deviation < 0.5,
            "max_resample_deviation",
            "must be >= even_spacing_tolerance and < 0.5",
        )
        _require(self.missing_slice_gap_factor > 1.0, "missing_slice_gap_factor", "must be > 1")
        _require(0.0 <= self.gantry_tilt_tolerance_deg < 45.0, "gantry_tilt_tolerance_deg", "must be in [0, 45)")
        _require(self.acquisition_gap_s > 0, "acquisition_gap_s", "must be > 0")
        _require(-3024.0 <= self.padding_hu <= 0.0, "padding_hu", "must be between -3024 and 0")
        _require(1 <= self.threads <= 64, "threads", "must be 1-64")


_DEFAULT_NC_PATTERNS: tuple[str, ...] = (
    r"\bnativ",  # de "nativ", es/it "nativo", fr "natif" after accent folding
    r"\bnatif",
    r"\bnon[ -]?(contrast|con|enh|enhanced|ic|iv)\b",
    r"\bunenhanced\b",
    r"\bpre[ -]?(contrast|con|kontrast|km|iv)?\b",
    r"\bplain\b",
    r"\bwithout\b",
    r"\bw/?o\b",
    r"\bohne\b",
    r"\bleer",  # de "Leerscan"
    r"\bsans\b",  # fr "sans injection", "sans contraste"
    r"\bsin\b",  # es "sin contraste"
    r"\bsenza\b",  # it "senza mdc"
    r"\bsimple\b",  # es "TC simple"
    r"\bblanco\b",  # nl "blanco"
    r"\bzonder\b",  # nl "zonder contrast"
    r"\bbasal",  # es "basal", it "basale"
    r"\bnc\b",
    r"\bncct\b",
    r"(^|\s)c-(\s|$)",
)
_DEFAULT_AP_PATTERNS: tuple[str, ...] = (
    r"arteri",  # en arterial, de arteriell, fr arteriel(le), es arterial, it arteriosa
    r"\bart\b",
    r"\bap\b",
    r"\bhap\b",
    r"\bkm[ -]?art",
)
_DEFAULT_VP_PATTERNS: tuple[str, ...] = (
    r"portal",  # en portal venous, de portalvenos, fr portal(e), es portal, it portale
    r"\bpv\b",
    r"\bpvp\b",
    r"\bvp\b",
    r"\bvenous\b",
    r"\bvenos",  # de venos (venös), es/it venosa/venoso
    r"\bveineu",  # fr veineux/veineuse
    r"\bportaa?l",  # nl portaal
    r"\bpvc\b",
)
_DEFAULT_DP_PATTERNS: tuple[str, ...] = (
    r"delay",
    r"\bspat",  # de spat (spät) after accent folding
    r"\bspaet",
    r"tardi",  # fr tardif/tardive, es tardia/tardio, it tardiva
    r"\bretard",
    r"\bvertraag",  # nl vertraagd
    r"equilib",  # equilibrium / equilibrio / equilibre
    r"\bdp\b",
    r"\blate\b(?!\s*art)",
    r"\b\d+\s*min\b",  # "3 min", "5min"
)
_DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (
    r"bolus",
    r"monitor",
    r"tracking",
    r"smart ?prep",
    r"\bscout\b",
    r"topogram",
    r"locali[sz]er",
    r"\bdose\b",
    r"\bmip\b",
    r"\bmpr\b",
    r"\bvrt?\b",
    r"coronal",
    r"sagittal",
    r"\bcor\b",
    r"\bsag\b",
)


@dataclass(frozen=True)
class PhaseRulesConfig:
    """Rules that name the contrast phase of each series (``pipeline.phases``, docs/ingest.md).

    Description patterns are Python regular expressions matched against the SeriesDescription
    after lower-casing and removing accents ("portalvenös" is matched as "portalvenos").
    """

    nc_patterns: tuple[str, ...] = _DEFAULT_NC_PATTERNS
    ap_patterns: tuple[str, ...] = _DEFAULT_AP_PATTERNS
    vp_patterns: tuple[str, ...] = _DEFAULT_VP_PATTERNS
    dp_patterns: tuple[str, ...] = _DEFAULT_DP_PATTERNS
    #: series whose description matches one of these are never phase candidates.
    exclude_patterns: tuple[str, ...] = _DEFAULT_EXCLUDE_PATTERNS
    #: acquisition time windows, seconds after the time reference (ContrastBolusStartTime, else
    #: the first series of the study); a time in a gap between windows goes to the nearest one.
    nc_max_offset_s: float = 15.0
    ap_window_s: tuple[float, float] = (20.0, 45.0)
    vp_window_s: tuple[float, float] = (50.0, 100.0)
    dp_min_offset_s: float = 120.0
    #: confirm (and overrule) the header label from HU statistics of the image.
    image_check: bool = True
    #: slices sampled per series for the image check.
    image_check_slices: int = 12
    #: aorta below this HU (or no enhanced round vessel at all): unenhanced.
    unenhanced_max_aorta_hu: float = 110.0
    #: aorta at least this HU and this much above the parenchyma: arterial.
    arterial_min_aorta_hu: float = 220.0
    arterial_min_aorta_to_parenchyma_hu: float = 120.0
    #: aorta at most this HU (and enhanced): venous or delayed.
    venous_max_aorta_hu: float = 200.0
    #: when two series compete for one phase, prefer the one nearest this slice thickness,
    #: then more slices, then the later series number.
    preferred_slice_thickness_mm: float = 5.0
    #: without a venous series, use the latest contrast phase (DP, else AP) as the reference
    #: instead of refusing the study.
    allow_reference_fallback: bool = False

    def __post_init__(self) -> None:
        import re

        for name in ("nc_patterns", "ap_patterns", "vp_patterns", "dp_patterns", "exclude_patterns"):
            value = tuple(str(p) for p in getattr(self, name))
            object.__setattr__(self, name, value)
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{name}: invalid regular expression {pattern!r}: {exc}") from exc
        object.__setattr__(self, "ap_window_s", tuple(float(v) for v in self.ap_window_s))
        object.__setattr__(self, "vp_window_s", tuple(float(v) for v in self.vp_window_s))
        _require(len(self.ap_window_s) == 2, "ap_window_s", "must be (start, end)")
        _require(len(self.vp_window_s) == 2, "vp_window_s", "must be (start, end)")
        _require(
            self.nc_max_offset_s <= self.ap_window_s[0] <= self.ap_window_s[1]
            <= self.vp_window_s[0] <= self.vp_window_s[1] <= self.dp_min_offset_s,
            "ap_window_s",
            "time windows must be ordered: nc_max_offset_s <= AP <= VP <= dp_min_offset_s",
        )
        _require(2 <= self.image_check_slices <= 200, "image_check_slices", "must be 2-200")
        _require(
            self.unenhanced_max_aorta_hu < self.venous_max_aorta_hu,
            "venous_max_aorta_hu",
            "must be above unenhanced_max_aorta_hu",
        )
        _require(
            self.unenhanced_max_aorta_hu < self.arterial_min_aorta_hu,
            "arterial_min_aorta_hu",
            "must be above unenhanced_max_aorta_hu",
        )
        _require(self.arterial_min_aorta_to_parenchyma_hu >= 0, "arterial_min_aorta_to_parenchyma_hu", "must be >= 0")
        _require(0.1 <= self.preferred_slice_thickness_mm <= 20.0, "preferred_slice_thickness_mm", "must be 0.1-20 mm")


@dataclass(frozen=True)
class RegistrationConfig:
    """Registration of every phase onto the venous phase (``pipeline.registration``)."""

    #: register at all; off: phases are only resampled onto the reference grid by coordinates.
    enabled: bool = True
    #: working voxel size; images are smoothed and downsampled to this before registering
    #: (an axis already coarser is kept as it is).
    working_spacing_mm: float = 2.0
    #: B-spline control point spacing at the finest level.
    bspline_grid_spacing_mm: float = 50.0
    #: run the B-spline stage after the affine one.
    deformable: bool = True
    #: elastix metric (both stages).
    metric: str = "AdvancedMattesMutualInformation"
    affine_iterations: int = 200
    bspline_iterations: int = 200
    #: pyramid levels of each stage.
    resolutions: int = 3
    #: random samples per iteration.
    spatial_samples: int = 3000
    #: HU window applied to both images before registering.
    intensity_window_hu: tuple[float, float] = (-200.0, 400.0)
    #: keep the registered phase only if NCC improves by at least this much.
    min_ncc_improvement: float = 0.0
    threads: int = 2
    #: value outside the moving phase's field of view after resampling.
    outside_hu: float = -1024.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "intensity_window_hu", tuple(float(v) for v in self.intensity_window_hu))
        _require(0.5 <= self.working_spacing_mm <= 10.0, "working_spacing_mm", "must be 0.5-10 mm")
        _require(5.0 <= self.bspline_grid_spacing_mm <= 200.0, "bspline_grid_spacing_mm", "must be 5-200 mm")
        _require(
            self.metric
            in (
                "AdvancedMattesMutualInformation",
                "AdvancedNormalizedCorrelation",
                "AdvancedMeanSquares",
                "NormalizedMutualInformation",
            ),
            "metric",
            "must be an elastix metric: AdvancedMattesMutualInformation, AdvancedNormalizedCorrelation, "
            "AdvancedMeanSquares or NormalizedMutualInformation",
        )
        _require(1 <= self.affine_iterations <= 5000, "affine_iterations", "must be 1-5000")
        _require(1 <= self.bspline_iterations <= 5000, "bspline_iterations", "must be 1-5000")
        _require(1 <= self.resolutions <= 6, "resolutions", "must be 1-6")
        _require(256 <= self.spatial_samples <= 200000, "spatial_samples", "must be 256-200000")
        _require(
            len(self.intensity_window_hu) == 2 and self.intensity_window_hu[0] < self.intensity_window_hu[1],
            "intensity_window_hu",
            "must be (low, high) with low < high",
        )
        _require(-1.0 <= self.min_ncc_improvement <= 1.0, "min_ncc_improvement", "must be in [-1, 1]")
        _require(1 <= self.threads <= 64, "threads", "must be 1-64")
        _require(-3024.0 <= self.outside_hu <= 0.0, "outside_hu", "must be between -3024 and 0")


@dataclass(frozen=True)
class BackendConfig:
    """Which segmentation model to load and how to run it (``pipeline.backends``)."""

    kind: str = "native"  # native | torchscript | nnunet
    model_dir: str = ""  # empty: the bundled demo model
    device: str = "auto"  # auto | cpu | cuda
    mirror_tta: bool = False
    overlap: float = 0.25
    precision: str = "auto"  # auto (bfloat16 where the CPU/GPU runs it fast) | float32 | bfloat16
    nnunet_folds: tuple[int, ...] = (0,)
    nnunet_checkpoint: str = "checkpoint_final.pth"
    typer_dir: str = ""  # empty: the model's own lesion typer (an nnU-Net folder has none)

    def __post_init__(self) -> None:
        if self.kind not in ("native", "torchscript", "nnunet"):
            raise ConfigError(f"kind: unknown backend {self.kind!r} (native, torchscript or nnunet)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: must be auto, cpu or cuda, not {self.device!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("overlap: must be in [0, 1)")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision: must be auto, float32 or bfloat16, not {self.precision!r}")
        if not self.nnunet_folds or any(fold < 0 for fold in self.nnunet_folds):
            raise ConfigError("nnunet_folds: must list one or more fold numbers (0, 1, ...)")
        if not self.nnunet_checkpoint:
            raise ConfigError("nnunet_checkpoint: must name the checkpoint file of each fold")
        if self.typer_dir.lower().endswith((".pt", ".pth", ".json")):
            raise ConfigError(f"typer_dir: must name a model folder (with model_card.json), "
                              f"not the file {self.typer_dir!r}")
