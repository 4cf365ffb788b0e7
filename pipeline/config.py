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

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity_factors", tuple(float(f) for f in self.sensitivity_factors))
        object.__setattr__(self, "patch_size_voxels", tuple(int(v) for v in self.patch_size_voxels))
        _require(len(self.sensitivity_factors) >= 1, "sensitivity_factors", "give at least one factor")
        _require(all(f > 0 for f in self.sensitivity_factors), "sensitivity_factors", "factors must be > 0")
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
