"""Numpy volumes with a VolumeGeometry to and from SimpleITK images (z, y, x arrays; ITK's x, y, z
spacing and size; LPS origin and direction as ITK has them)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipeline.types import VolumeGeometry


def set_geometry(image: sitk.Image, geometry: VolumeGeometry) -> None:
    """Give `image` the spacing, origin and direction of `geometry`."""
    image.SetSpacing(tuple(float(s) for s in reversed(geometry.spacing_mm)))
    image.SetOrigin(tuple(float(v) for v in geometry.origin_mm))
    image.SetDirection(tuple(float(v) for v in geometry.direction))


def to_sitk(array: np.ndarray, geometry: VolumeGeometry) -> sitk.Image:
    """A (Z, Y, X) array as a SimpleITK image on `geometry`."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    set_geometry(image, geometry)
    return image


def geometry_of(image: sitk.Image) -> VolumeGeometry:
    """The VolumeGeometry of a SimpleITK image."""
    return VolumeGeometry(
        shape=tuple(int(v) for v in reversed(image.GetSize())),  # type: ignore[arg-type]
        spacing_mm=tuple(float(v) for v in reversed(image.GetSpacing())),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
    )
