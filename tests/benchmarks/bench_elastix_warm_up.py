"""What the worker's elastix warm-up saves the first study: the first registration in a fresh
process, cold and after `warm_up_elastix`, each in its own process.

    .venv/bin/python tests/benchmarks/bench_elastix_warm_up.py

Prints, per mode, the warm-up's seconds (warm only) and two registrations of a 48 x 96 x 96 pair
(4 x 2 x 2 mm, shifted 4 mm) with the default registration settings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_REPO = Path(__file__).resolve().parents[2]


def _one_process(warm: bool) -> None:
    from pipeline.config import RegistrationConfig
    from pipeline.registration import elastix_displacement, warm_up_elastix

    noise = np.random.default_rng(0).normal(0.0, 100.0, (48, 96, 96)).astype(np.float32)
    volume = ndimage.gaussian_filter(noise, 3.0)
    fixed, moving = sitk.GetImageFromArray(volume), sitk.GetImageFromArray(np.roll(volume, 2, axis=2))
    for image in (fixed, moving):
        image.SetSpacing((2.0, 2.0, 4.0))
    config = RegistrationConfig()
    line = "warm" if warm else "cold"
    if warm:
        line += f": warm-up {warm_up_elastix(config):.2f} s"
    for attempt in range(2):
        started = time.perf_counter()
        elastix_displacement(fixed, moving, np.ones(volume.shape, bool), config)
        line += f", registration {attempt + 1} {time.perf_counter() - started:.2f} s"
    print(line, flush=True)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in ("cold", "warm"):
        _one_process(sys.argv[1] == "warm")
        return
    for mode in ("cold", "warm"):
        subprocess.run([sys.executable, __file__, mode], cwd=_REPO, check=True)


if __name__ == "__main__":
    main()
