"""Training steps per second of the bundled recipe's UNet_whole (batch 2 x 8 x 32 x 96 x 96) and
UNet_patch (batch 16 x 8 x 16 x 48 x 48) on this machine's CPU, float32 and (where the CPU has bf16
kernels) bfloat16 autocast. Tells whether a training recipe fits the time there is.

    .venv/bin/python docs/tools/train_step_speed.py [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.model import bf16_supported
from pipeline.train_bundled import BundledRecipe


def steps_per_second(spec, shape: tuple[int, ...], batch: int, bf16: bool, steps: int = 4) -> float:
    """Forward, backward and optimizer step of a fresh `spec` network on random input."""
    network = spec.build()
    optimizer = torch.optim.AdamW(network.parameters())
    image = torch.randn(batch, spec.in_channels, *shape)
    for step in range(steps + 2):
        if step == 2:  # the first steps warm up the kernels
            started = time.perf_counter()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            out = network(image)
        loss = out.float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    whole, patch, prep = BundledRecipe().networks()
    modes = [False] + ([True] if bf16_supported(torch.device("cpu")) else [])
    print(f"{args.threads} threads; bf16 kernels on this CPU: {bf16_supported(torch.device('cpu'))}")
    for name, spec, shape, batch in (("UNet_whole", whole, prep.roi_size_voxels, 2),
                                     ("UNet_patch", patch, prep.patch_size_voxels, 16)):
        for bf16 in modes:
            rate = steps_per_second(spec, tuple(shape), batch, bf16)
            print(f"{name} {'bfloat16' if bf16 else 'float32'}: {rate:.2f} steps/s")


if __name__ == "__main__":
    main()
