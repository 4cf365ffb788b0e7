"""A genuine nnU-Net v2 trained-model folder, tiny enough for unit tests.

The folder is laid out as ``nnUNetv2_train`` leaves it (``dataset.json``, ``plans.json``,
``fold_N/checkpoint_final.pth``): the plans follow ``ExperimentPlanner`` (a ``3d_fullres``
configuration with a ``PlainConvUNet``, CT normalisation with the dataset fingerprint's intensity
properties, nnU-Net's default resampling), the network is built from those plans by nnU-Net's own
``nnUNetTrainer.build_network_architecture``, and the checkpoint holds the keys
``nnUNetTrainer.save_checkpoint`` writes. The weights are nnU-Net's initialisation, not trained:
the folder tests loading and prediction, not accuracy.

Needs the optional extra (``livernode[nnunet]``); importing this module without nnunetv2 fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pipeline.types import Label

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"

#: What nnU-Net's fingerprint extractor records for a CT channel (HU of the foreground voxels).
CT_INTENSITIES = {"max": 1200.0, "mean": 80.0, "median": 70.0, "min": -1000.0,
                  "percentile_00_5": -120.0, "percentile_99_5": 320.0, "std": 60.0}

#: nnU-Net's default resampling (ExperimentPlanner.determine_resampling and
#: determine_segmentation_softmax_export_fn).
_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


@dataclass(frozen=True)
class TinyNnUNet:
    """What the folder's plans describe; the defaults make a 3-stage U-Net of a few thousand weights."""

    channels: tuple[str, ...] = ("AP", "VP")
    labels: tuple[tuple[str, int], ...] = tuple((label.name.lower(), int(label)) for label in Label)
    spacing_mm: tuple[float, float, float] = (3.0, 2.0, 2.0)  # (z, y, x), as nnU-Net's SimpleITK order
    patch_size: tuple[int, int, int] = (16, 32, 32)
    features: tuple[int, ...] = (4, 8, 16)
    strides: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    kernel_sizes: tuple[tuple[int, int, int], ...] = ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    dataset_name: str = "Dataset901_LivernodeTiny"


def dataset_json(spec: TinyNnUNet) -> dict[str, Any]:
    """``dataset.json`` as in the raw dataset (nnU-Net copies it into the trained-model folder)."""
    return {
        "channel_names": {str(i): name for i, name in enumerate(spec.channels)},
        "labels": dict(spec.labels),
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }


def _architecture(spec: TinyNnUNet) -> dict[str, Any]:
    stages = len(spec.features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": list(spec.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in spec.kernel_sizes],
            "strides": [list(s) for s in spec.strides],
            "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans_json(spec: TinyNnUNet, median_shape: tuple[int, int, int] = (40, 96, 96)) -> dict[str, Any]:
    """``plans.json`` with one ``3d_fullres`` configuration, keys as ExperimentPlanner writes them."""
    configuration = {
        "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(spec.patch_size),
        "median_image_size_in_voxels": list(median_shape),
        "spacing": list(spec.spacing_mm),
        "normalization_schemes": ["CTNormalization"] * len(spec.channels),
        "use_mask_for_norm": [False] * len(spec.channels),
        **_RESAMPLING,
        "architecture": _architecture(spec),
    }
    return {
        "dataset_name": spec.dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": list(spec.spacing_mm),
        "original_median_shape_after_transp": list(median_shape),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): dict(CT_INTENSITIES) for i in range(len(spec.channels))
        },
    }


def build_network(plans: dict[str, Any], dataset: dict[str, Any]) -> torch.nn.Module:
    """The network of the plans, built and initialised by nnU-Net's own trainer code."""
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    return nnUNetTrainer.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset),
        plans_manager.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=True,  # as trained; the weights are the same without it
    )


def checkpoint(network: torch.nn.Module, plans: dict[str, Any], dataset: dict[str, Any], fold: int) -> dict[str, Any]:
    """The dictionary ``nnUNetTrainer.save_checkpoint`` saves at the end of training."""
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def write_nnunet_folder(folder: Path, spec: TinyNnUNet = TinyNnUNet(), folds: tuple[int, ...] = (0,),
                        seed: int = 0) -> Path:
    """Write the trained-model folder (``Dataset.../nnUNetTrainer__nnUNetPlans__3d_fullres``) and
    return it. Each fold's weights come from nnU-Net's initialisation with ``seed + fold``."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset, plans = dataset_json(spec), plans_json(spec)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4), encoding="utf-8")
    (folder / "plans.json").write_text(json.dumps(plans, indent=4), encoding="utf-8")
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = build_network(plans, dataset)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint(network, plans, dataset, fold), folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
