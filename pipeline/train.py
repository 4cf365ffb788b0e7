"""The training loop shared by UNet_whole and UNet_patch: MONAI data pipeline with augmentation,
random phase dropout with presence channels, validation on whole volumes, checkpointing and resume,
bfloat16 autocast where the hardware runs it fast.

``pipeline.train_models`` (``livernode train whole|patch``) and ``pipeline.train_bundled``
(``livernode train bundled``) call :func:`train_network`.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandGaussianSmoothd,
    SpatialPadd,
)

from pipeline.inference import ModelInput, WholePredictor, prepare_input, resample_volume
from pipeline.model import (
    WHOLE_NETWORK,
    ModelCard,
    NetworkSpec,
    Preprocessing,
    TyperEntry,
    WeightsEntry,
    load_native_network,
    save_native_weights,
    select_device,
    use_bf16,
    write_model_card,
)
from pipeline.training_loss import SegmentationLoss
from pipeline.types import LESION_LABELS, NUM_CLASSES, OTHER_ORGAN_LABELS, PHASE_ORDER, Label, Phase, VolumeGeometry

log = logging.getLogger(__name__)

#: Phase combinations sampled by random phase dropout (weights), so one model serves them all.
PHASE_DROPOUT_COMBINATIONS: tuple[tuple[tuple[Phase, ...], float], ...] = (
    ((Phase.NC, Phase.AP, Phase.VP, Phase.DP), 0.35),
    ((Phase.NC, Phase.AP, Phase.VP), 0.15),
    ((Phase.AP, Phase.VP), 0.2),
    ((Phase.AP, Phase.VP, Phase.DP), 0.1),
    ((Phase.VP,), 0.12),
    ((Phase.NC, Phase.VP), 0.08),
)


@dataclass
class TrainingCase:
    """One study on the working grid: normalised phases (P, Z, Y, X) float16 and labels uint8."""

    case_id: str
    phases: np.ndarray  # float16 (len(PHASE_ORDER), Z, Y, X), normalised; absent phases are zeros
    present: tuple[Phase, ...]
    labels: np.ndarray  # uint8 (Z, Y, X)
    geometry: VolumeGeometry


CROP_CENTRES = ("voxels", "lesions")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run."""

    iterations: int = 4000
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    crop_size_voxels: tuple[int, int, int] = (48, 128, 128)
    positive_fraction: float = 0.67
    validate_every: int = 500
    checkpoint_every: int = 250
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    #: weight of the lesion classes (1-6) in the loss, against 1 for every other class.
    lesion_class_weight: float = 1.0
    #: weight of the organs and vessels besides the liver (labels 8-13) in UNet_whole's loss; the
    #: bundled recipe's 1 never taught it vessels, gallbladder or pancreas (docs/models.md)
    organ_class_weight: float = 1.0
    #: weight of the soft Dice of the lesion-class union ("any lesion"; pipeline.training_loss)
    lesion_union_weight: float = 0.0
    #: weight of the per-lesion-instance ("blob") Dice of the lesion union (pipeline.training_loss):
    #: every lesion of a crop counts alike, however small
    lesion_blob_weight: float = 0.0
    #: auto: bfloat16 autocast where the hardware runs it fast (pipeline.model.bf16_supported)
    precision: str = "auto"
    #: where the lesion-centred crops are centred: "voxels" (any lesion voxel, so large lesions are
    #: the centre of most crops) or "lesions" (every lesion equally often, whatever its size)
    crop_centres: str = "voxels"

    def __post_init__(self) -> None:
        if self.crop_centres not in CROP_CENTRES:
            raise ValueError(f"crop_centres must be one of {CROP_CENTRES}, got {self.crop_centres!r}")


def case_from_arrays(
    case_id: str,
    hu_by_phase: dict[Phase, np.ndarray],
    labels: np.ndarray,
    geometry: VolumeGeometry,
    prep: Preprocessing,
) -> TrainingCase:
    """Resample a study (phases and labels on one grid) onto the model's working grid."""
    model_input: ModelInput = prepare_input(hu_by_phase, geometry, prep)
    shape = model_input.geometry.shape
    work_labels = resample_volume(labels.astype(np.uint8), shape, mode="nearest")
    count = len(prep.phase_order)
    return TrainingCase(
        case_id=case_id,
        phases=model_input.image[:count].astype(np.float16),
        present=model_input.present,
        labels=work_labels.astype(np.uint8),
        geometry=model_input.geometry,
    )


def _choose_phases(rng: np.random.Generator, available: tuple[Phase, ...]) -> tuple[Phase, ...]:
    options = [(c, w) for c, w in PHASE_DROPOUT_COMBINATIONS if set(c) <= set(available)]
    if not options:
        return available
    weights = np.array([w for _, w in options], dtype=np.float64)
    choice = rng.choice(len(options), p=weights / weights.sum())
    return options[int(choice)][0]


class PhaseDropoutAndContrast:
    """Random phase dropout (explicit presence channels) and per-phase contrast-timing/intensity
    jitter, applied to the normalised phases. Produces the 2P-channel network input."""

    def __init__(self, seed: int, enabled: bool = True) -> None:
        self.rng = np.random.default_rng(seed)
        self.enabled = enabled

    def __call__(self, sample: dict) -> dict:
        phases = np.asarray(sample["image"], dtype=np.float32)  # (P, Z, Y, X)
        available = tuple(PHASE_ORDER[i] for i in range(len(PHASE_ORDER)) if sample["present"][i])
        keep = _choose_phases(self.rng, available) if self.enabled else available
        out = np.zeros((2 * len(PHASE_ORDER),) + phases.shape[1:], dtype=np.float32)
        for index, phase in enumerate(PHASE_ORDER):
            if phase not in keep:
                continue
            channel = phases[index]
            if self.enabled:
                # contrast timing: stretch enhancement around soft tissue; scanner calibration offset
                gain = self.rng.uniform(0.85, 1.15)
                offset = self.rng.uniform(-0.1, 0.1)
                channel = channel * gain + offset
            out[index] = channel
            out[len(PHASE_ORDER) + index] = 1.0
        result = dict(sample)
        result["image"] = out
        return result


def build_transforms(config: TrainConfig, seed: int, augment: bool = True) -> Compose:
    """The MONAI pipeline: pad, crop around lesions/foreground, spatial and intensity augmentation."""
    steps: list = [
        SpatialPadd(keys=("image", "label", "lesion"), spatial_size=config.crop_size_voxels, mode="constant"),
        RandCropByPosNegLabeld(
            keys=("image", "label"),
            label_key="lesion",
            spatial_size=config.crop_size_voxels,
            pos=config.positive_fraction,
            neg=1.0 - config.positive_fraction,
            num_samples=1,
            allow_smaller=False,
        ),
        PhaseDropoutAndContrast(seed=seed, enabled=augment),
    ]
    if augment:
        steps += [
            RandAffined(
                keys=("image", "label"),
                prob=0.5,
                rotate_range=(0.15, 0.05, 0.05),
                scale_range=(0.12, 0.12, 0.12),
                translate_range=(2, 6, 6),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandGaussianNoised(keys=("image",), prob=0.3, std=0.08),
            RandGaussianSmoothd(keys=("image",), prob=0.15, sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8), sigma_z=(0.3, 0.8)),
        ]
    transforms = Compose(steps)
    transforms.set_random_state(seed=seed)
    return transforms


def lesion_centres(lesion: np.ndarray) -> np.ndarray:
    """One voxel per connected lesion (its deepest), so that a crop centred on a random marked
    voxel is centred on each lesion equally often."""
    components, count = ndimage.label(lesion)
    centres = np.zeros(lesion.shape, dtype=bool)
    if count:
        depth = ndimage.distance_transform_edt(lesion)
        for position in ndimage.maximum_position(depth, components, range(1, count + 1)):
            centres[position] = True
    return centres


def _sample_dict(case: TrainingCase, crop_centres: str = "voxels") -> dict:
    lesion = np.isin(case.labels, LESION_LABELS)
    if not lesion.any():
        lesion = case.labels == int(Label.LIVER)
    elif crop_centres == "lesions":
        lesion = lesion_centres(lesion)
    return {
        "image": case.phases.astype(np.float32),
        "label": case.labels[None].astype(np.int64),
        "lesion": lesion[None],
        "present": np.array([p in case.present for p in PHASE_ORDER]),
    }


def _collate(items: list) -> dict:
    flat = [item[0] if isinstance(item, list) else item for item in items]
    image = torch.stack([torch.as_tensor(np.asarray(x["image"]), dtype=torch.float32) for x in flat])
    label = torch.stack([torch.as_tensor(np.asarray(x["label"]), dtype=torch.int64) for x in flat])
    return {"image": image, "label": label}


class _InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        while True:
            yield from self.rng.permutation(self.size).tolist()


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of each label (NaN when absent from both)."""
    out: dict[int, float] = {}
    for label in labels:
        p = prediction == label
        t = truth == label
        denominator = int(p.sum()) + int(t.sum())
        out[int(label)] = float("nan") if denominator == 0 else 2.0 * float((p & t).sum()) / denominator
    return out


def organ_dice(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each of the organs and vessels besides the liver (labels 8-13) that the truth or the
    prediction holds, by label name (an organ in the truth that the prediction lacks, or the
    reverse, scores 0; one in neither is left out)."""
    scores = dice_per_class(prediction, truth, [int(label) for label in OTHER_ORGAN_LABELS])
    return {Label(value).name: score for value, score in scores.items() if not np.isnan(score)}


def case_model_input(case: TrainingCase, prep: Preprocessing) -> ModelInput:
    """The network input of a case with all its phases (HU recovered from the normalised phases,
    so clipped to the preprocessing window)."""
    count = len(prep.phase_order)
    image = np.zeros((2 * count,) + case.labels.shape, dtype=np.float32)
    for index, phase in enumerate(prep.phase_order):
        if phase in case.present:
            image[index] = case.phases[index]
            image[count + index] = 1.0
    hu = {p: case.phases[i].astype(np.float32) * prep.hu_scale + prep.hu_center
          for i, p in enumerate(prep.phase_order) if p in case.present}
    return ModelInput(image=image, hu=hu, geometry=case.geometry, present=case.present)


def validate(predictor: WholePredictor, cases: Sequence[TrainingCase]) -> dict[str, float]:
    """Mean liver Dice, lesion (any type) Dice and organ Dice (:func:`organ_dice` averaged per
    study, then over studies) on whole validation volumes."""
    liver, lesion, organs = [], [], []
    for case in cases:
        probs = predictor.predict(case_model_input(case, predictor.prep))
        argmax = probs.argmax(axis=0).astype(np.uint8)
        liver_truth = np.isin(case.labels, (int(Label.LIVER),) + LESION_LABELS)
        liver_pred = np.isin(argmax, (int(Label.LIVER),) + LESION_LABELS)
        liver.append(dice_per_class(liver_pred.astype(np.uint8), liver_truth.astype(np.uint8), [1])[1])
        lesion_truth = np.isin(case.labels, LESION_LABELS).astype(np.uint8)
        lesion_pred = np.isin(argmax, LESION_LABELS).astype(np.uint8)
        value = dice_per_class(lesion_pred, lesion_truth, [1])[1]
        if not np.isnan(value):
            lesion.append(value)
        scores = organ_dice(argmax, case.labels)
        if scores:
            organs.append(float(np.mean(list(scores.values()))))
    return {
        "liver_dice": float(np.mean(liver)) if liver else float("nan"),
        "lesion_dice": float(np.mean(lesion)) if lesion else float("nan"),
        "organ_dice": float(np.mean(organs)) if organs else float("nan"),
    }


@dataclass
class TrainResult:
    """What a training run produced."""

    weights_path: Path
    sha256: str
    iterations: int
    validation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _validation_line(weights_name: str, iteration: int, validation: dict[str, float]) -> str:
    return f"{weights_name}: validation at {iteration}: " + ", ".join(f"{k} {v:.3f}" for k, v in validation.items())


def train_network(
    spec: NetworkSpec,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase],
    prep: Preprocessing,
    config: TrainConfig,
    out_dir: Path,
    weights_name: str,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    init_weights: Path | None = None,
) -> TrainResult:
    """Train `spec` on `train_cases` (crops), validating on whole `val_cases`; checkpoint to `out_dir`.
    `init_weights` starts from earlier weights of the same network (fine-tuning)."""
    say = progress or log.info
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    network = load_native_network(init_weights, spec, device) if init_weights else spec.build().to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.iterations, pct_start=0.1
    )
    organs = [int(label) for label in OTHER_ORGAN_LABELS] if spec.out_channels == NUM_CLASSES else []
    loss_fn = SegmentationLoss(spec.out_channels, LESION_LABELS, config.lesion_class_weight,
                               config.lesion_union_weight, organ_labels=organs,
                               organ_class_weight=config.organ_class_weight,
                               blob_weight=config.lesion_blob_weight).to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / f"{Path(weights_name).stem}.checkpoint.pt"
    start = 0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        saved_total = state.get("total_iterations", state["scheduler"].get("total_steps", config.iterations))
        if int(saved_total) == config.iterations:
            scheduler.load_state_dict(state["scheduler"])
        else:
            # a longer (or shorter) run than the checkpoint's: the learning-rate schedule is redrawn
            # over the new length and wound forward to where training stopped
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(start, config.iterations)):
                    scheduler.step()
        say(f"resumed from {checkpoint_path} at iteration {start}")

    dataset = Dataset([_sample_dict(c, config.crop_centres) for c in train_cases], transform=build_transforms(config, config.seed + start))
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=_InfiniteSampler(len(dataset), config.seed + start),
        num_workers=config.num_workers,
        collate_fn=_collate,
        persistent_workers=config.num_workers > 0,
    )
    bf16 = use_bf16(device, config.precision)
    if bf16:
        say(f"{weights_name}: training under bfloat16 autocast on {device}")
    predictor = WholePredictor(network, prep, device, bf16=bf16)
    started = time.perf_counter()
    iteration = start
    running = 0.0
    validation: dict[str, float] = {}
    network.train()
    for batch in loader:
        if iteration >= config.iterations:
            break
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = network(image)
        loss = loss_fn(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        scheduler.step()
        iteration += 1
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if iteration > start + 1 else value
        if iteration % 50 == 0 or iteration == config.iterations:
            elapsed = time.perf_counter() - started
            rate = (iteration - start) / max(elapsed, 1e-9)
            eta = (config.iterations - iteration) / max(rate, 1e-9)
            say(f"{weights_name}: iteration {iteration}/{config.iterations} loss {running:.4f} "
                f"({rate:.2f} it/s, about {eta / 60:.1f} min left)")
        if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
            torch.save(
                {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "iteration": iteration,
                 "total_iterations": config.iterations},
                checkpoint_path,
            )
        if val_cases and (iteration % config.validate_every == 0 or iteration == config.iterations):
            network.eval()
            validation = validate(predictor, val_cases)
            network.train()
            say(_validation_line(weights_name, iteration, validation))
    network.eval()
    if val_cases and not validation:  # resumed from a finished checkpoint: still report its validation
        validation = validate(predictor, val_cases)
        say(_validation_line(weights_name, iteration, validation))
    weights_path = out_dir / weights_name
    sha = save_native_weights(network, weights_path)
    return TrainResult(weights_path, sha, iteration, validation, time.perf_counter() - started)


def write_card(
    out_dir: Path,
    prep: Preprocessing,
    whole: TrainResult,
    patch: TrainResult | None,
    patch_spec: NetworkSpec | None,
    name: str,
    version: str,
    training_data: str,
    metrics: dict | None = None,
    whole_spec: NetworkSpec = WHOLE_NETWORK,
    typer: TyperEntry | None = None,
) -> Path:
    """Write the model card for freshly trained weights."""
    card = ModelCard(
        name=name,
        version=version,
        format="native",
        preprocessing=prep,
        whole=WeightsEntry(file=whole.weights_path.name, sha256=whole.sha256, network=whole_spec),
        patch=(
            WeightsEntry(file=patch.weights_path.name, sha256=patch.sha256, network=patch_spec)
            if patch is not None
            else None
        ),
        labels={str(int(label)): label.name for label in Label},
        training_data=training_data,
        intended_use="Demonstration and testing only. NOT FOR CLINICAL USE: trained on synthetic phantoms.",
        metrics=metrics or {},
        typer=typer,
    )
    return write_model_card(out_dir, card)


__all__ = [
    "TrainConfig",
    "TrainingCase",
    "TrainResult",
    "case_from_arrays",
    "case_model_input",
    "train_network",
    "validate",
    "write_card",
]
