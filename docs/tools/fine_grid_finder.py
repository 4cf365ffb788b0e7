"""Experiment (session 33): does a finer in-plane grid let a network find the small malignant lesions
UNet_whole misses? A small 3D U-Net trained from scratch on a 4 x 1 x 1 mm grid cropped to the
liver, judged on the validation phantoms (seeds 20100+; never the held-out set).

Sessions 16-32 (docs/models.md) found that the malignant lesions UNet_whole misses are small
(0.5-3 ml) and faint, and that what tells a small ICC from the liver is its 2 mm enhancing rim,
which a 2-3 mm in-plane grid does not resolve. Training UNet_whole itself from scratch on a finer
grid is a GPU job; a network that only has to tell lesion from liver inside the liver's bounding
box is small enough to train from scratch on these 2 cores, so this is the cheap test of the
"finer grid from the first stage" idea. It is not a cascade step.

    python docs/tools/fine_grid_finder.py generate --train 120 --small 60 --validation 96 --work W
    python docs/tools/fine_grid_finder.py train --work W --iterations 12000
    python docs/tools/fine_grid_finder.py evaluate --work W --thresholds 0.5 0.8 0.95

Cases are cropped to the true liver's bounding box plus a margin (a cascade step would crop to
UNet_whole's liver), and found regions are counted inside the true liver dilated by 2 voxels: the
lesions found are an upper bound on what the finder would give the cascade, and the false regions
a lower bound on what it would add. A true
lesion of 0.5 ml or more is found where a region (voxels whose summed lesion probability exceeds
the threshold, ``--min-ml`` or larger) shares voxels with it, as DESIGN's match counts; a region
that touches no true lesion (dilated by 2 voxels) is a false region. Its type is the vote of the
finder's malignant (HCC, ICC, metastasis) against its benign lesion probabilities. The list of
malignant lesions under 3 ml is what to compare with ``docs/tools/missed_lesions.py``'s misses of
UNet_whole on the same studies.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pipeline.model import Preprocessing, select_device
from pipeline.train import PhaseDropoutAndContrast, case_from_arrays
from pipeline.training_data import (PhantomCaseSpec, phantom_volumes, small_lesion_training_specs,
                                    tuning_specs, type_balanced_training_specs)
from pipeline.types import LESION_LABELS, PHASE_ORDER, Label

SPACING_MM = (4.0, 1.0, 1.0)
MARGIN_MM = (8.0, 12.0, 12.0)
#: finder classes: 0 not liver, 1 liver, 2-7 the six lesion types (Label 1-6 + 1)
CLASSES = 8
MALIGNANT_CLASSES = (2, 3, 4)
CROP = (16, 64, 64)
PREP = Preprocessing(target_spacing_mm=SPACING_MM, anti_alias=True)


def finder_labels(labels: np.ndarray) -> np.ndarray:
    """Map the 14 phantom labels onto the finder's 8 classes."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[labels == int(Label.LIVER)] = 1
    for value in LESION_LABELS:
        out[labels == value] = value + 1
    return out


def make_fine_case(spec: PhantomCaseSpec, path: Path) -> str:
    """Render `spec`, resample it onto the 4 x 1 x 1 mm grid and keep the liver's bounding box."""
    torch.set_num_threads(1)
    volumes = phantom_volumes(spec)
    case = case_from_arrays(spec.case_id, volumes.hu, volumes.labels, volumes.geometry, PREP)
    labels = finder_labels(case.labels)
    liver = labels > 0
    if not liver.any():
        raise ValueError(f"{spec.case_id}: no liver")
    box = []
    for axis, margin in enumerate(MARGIN_MM):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(liver.any(axis=other))
        pad = int(round(margin / SPACING_MM[axis]))
        box.append(slice(max(0, hits[0] - pad), min(liver.shape[axis], hits[-1] + pad + 1)))
    zs, ys, xs = box
    kept = labels[zs, ys, xs]
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, phases=case.phases[:, zs, ys, xs], labels=kept,
                        present=np.array([p in case.present for p in PHASE_ORDER]))
    partial.replace(path)
    return f"{spec.case_id} {kept.shape}"


def generate(specs: list[PhantomCaseSpec], folder: Path, processes: int) -> None:
    """Write every spec's fine case into `folder` (cases already there are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(spec, folder / f"{spec.case_id}.npz") for spec in specs if not (folder / f"{spec.case_id}.npz").is_file()]
    print(f"{folder}: {len(specs) - len(todo)} cached, {len(todo)} to make", flush=True)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        for count, line in enumerate(pool.map(make_fine_case, *zip(*todo)) if todo else [], 1):
            print(f"  {count}/{len(todo)} {line}", flush=True)


def load(folder: Path) -> list[dict]:
    cases = []
    for path in sorted(folder.glob("phantom-*.npz")):
        if path.name.endswith(".partial.npz"):
            continue
        with np.load(path) as data:
            cases.append({"id": path.stem, "phases": data["phases"], "labels": data["labels"],
                          "present": data["present"]})
    return cases


def network() -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, 2 * len(PHASE_ORDER), CLASSES, kernel_size=[3, 3, 3, 3],
                   strides=[1, (1, 2, 2), (2, 2, 2), (2, 2, 2)],
                   upsample_kernel_size=[(1, 2, 2), (2, 2, 2), (2, 2, 2)],
                   filters=[16, 32, 64, 128], norm_name="instance")


class Sampler:
    """Crops of CROP voxels: `lesion_share` centred near a lesion chosen uniformly among the case's
    lesions (so a small one as often as a large one), the rest at a random liver voxel."""

    def __init__(self, cases: list[dict], seed: int, lesion_share: float = 0.6) -> None:
        self.cases = cases
        self.rng = np.random.default_rng(seed)
        self.lesion_share = lesion_share
        self.dropout = PhaseDropoutAndContrast(seed)
        for case in cases:
            components, count = ndimage.label(case["labels"] >= 2)
            case["lesions"] = [np.argwhere(components == i) for i in range(1, count + 1)]
            case["liver"] = np.argwhere(case["labels"] >= 1)

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[self.rng.integers(len(self.cases))]
        if case["lesions"] and self.rng.random() < self.lesion_share:
            voxels = case["lesions"][self.rng.integers(len(case["lesions"]))]
            centre = voxels[self.rng.integers(len(voxels))] + self.rng.integers(-2, 3, 3) * np.array([1, 6, 6])
        else:
            centre = case["liver"][self.rng.integers(len(case["liver"]))]
        shape = np.array(case["labels"].shape)
        lo = np.asarray(centre) - np.array(CROP) // 2
        image = np.zeros((len(PHASE_ORDER),) + CROP, dtype=np.float32)
        label = np.zeros(CROP, dtype=np.int64)
        src = tuple(slice(max(0, a), min(n, a + c)) for a, n, c in zip(lo, shape, CROP))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
        image[(slice(None),) + dst] = case["phases"][(slice(None),) + src]
        label[dst] = case["labels"][src]
        sample = self.dropout({"image": image, "present": case["present"]})
        image = sample["image"]
        for axis in (1, 2):
            if self.rng.random() < 0.5:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        count = len(PHASE_ORDER)
        image = image.copy()
        image[:count] += self.rng.normal(0, 0.03, image[:count].shape).astype(np.float32) * image[count:]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def loss_fn(logits: torch.Tensor, label: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy plus the soft Dice of the lesion union."""
    ce = torch.nn.functional.cross_entropy(logits, label, weight=weights)
    prob = torch.softmax(logits, 1)[:, 2:].sum(1)
    truth = (label >= 2).float()
    dice = 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)
    return ce + dice


def train(work: Path, iterations: int, batch: int, learning_rate: float, seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    cases = load(work / "train")
    print(f"{len(cases)} training cases", flush=True)
    sampler = Sampler(cases, seed)
    net = network()
    optimiser = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-5)
    start = 0
    checkpoint = work / "finder.checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        start = state["iteration"]
        print(f"resumed at {start}", flush=True)
    weights = torch.tensor([1.0, 1.0] + [3.0] * 6)
    began, running = time.time(), []
    for iteration in range(start, iterations):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * (1 - iteration / iterations) ** 0.9
        crops = [sampler.crop() for _ in range(batch)]
        image = torch.from_numpy(np.stack([c[0] for c in crops]))
        label = torch.from_numpy(np.stack([c[1] for c in crops]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(image)
        loss = loss_fn(logits.float(), label, weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running.append(loss.item())
        if (iteration + 1) % 100 == 0:
            rate = (iteration + 1 - start) / (time.time() - began)
            print(f"iteration {iteration + 1}/{iterations} loss {np.mean(running):.4f} {rate:.2f} it/s", flush=True)
            running = []
        if (iteration + 1) % 500 == 0 or iteration + 1 == iterations:
            torch.save({"net": net.state_dict(), "optimiser": optimiser.state_dict(), "iteration": iteration + 1},
                       checkpoint)
    torch.save(net.state_dict(), work / "finder.pt")


def predict(net: torch.nn.Module, case: dict, device: torch.device) -> np.ndarray:
    """Class probabilities (CLASSES, Z, Y, X) with every present phase."""
    from monai.inferers import sliding_window_inference

    count = len(PHASE_ORDER)
    image = np.zeros((2 * count,) + case["labels"].shape, dtype=np.float32)
    for index in range(count):
        if case["present"][index]:
            image[index] = case["phases"][index]
            image[count + index] = 1.0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        logits = sliding_window_inference(torch.from_numpy(image)[None].to(device), (32, 128, 128), 4, net,
                                          overlap=0.25, mode="gaussian")
    return torch.softmax(logits.float(), 1)[0].cpu().numpy()


def evaluate(work: Path, thresholds: list[float], min_ml: float, weights: Path | None = None) -> None:
    device = select_device("auto")
    net = network()
    state = torch.load(weights or work / "finder.pt", weights_only=False)
    net.load_state_dict(state["net"] if "net" in state else state)
    net.eval().to(device)
    voxel_ml = float(np.prod(SPACING_MM)) / 1000.0
    rows = []  # (case, type, ml, {t: found}, typed malignant, peak lesion probability)
    false = {t: 0 for t in thresholds}
    false_malignant = {t: 0 for t in thresholds}
    false_inside = {t: 0 for t in thresholds}
    cases = load(work / "validation")
    for case in cases:
        prob = predict(net, case, device)
        lesion_p = prob[2:].sum(0)
        malignant_p = prob[list(MALIGNANT_CLASSES)].sum(0)
        benign_p = lesion_p - malignant_p

        def typed_malignant(mask: np.ndarray) -> bool:
            """The finder's vote on a region: malignant against benign lesion probability."""
            return bool(malignant_p[mask].sum() > benign_p[mask].sum())

        labels = case["labels"]
        truth = labels >= 2
        region = ndimage.binary_dilation(labels >= 1, iterations=2)
        components, count = ndimage.label(truth)
        near_truth = ndimage.binary_dilation(truth, iterations=2)
        interior = ndimage.binary_erosion(labels >= 1, structure=np.ones((1, 7, 7), bool))
        kept = {}
        for t in thresholds:
            found_mask = (lesion_p > t) & region
            regions, n = ndimage.label(found_mask)
            sizes = np.bincount(regions.ravel(), minlength=n + 1)
            large = sizes * voxel_ml >= min_ml
            large[0] = False
            kept[t] = large[regions]
            touching = np.unique(regions[near_truth])
            for index in range(1, n + 1):
                if large[index] and index not in touching:
                    false[t] += 1
                    mask = regions == index
                    if interior[tuple(np.round(ndimage.center_of_mass(mask)).astype(int))]:
                        false_inside[t] += 1
                    false_malignant[t] += typed_malignant(mask)
        for index in range(1, count + 1):
            mask = components == index
            ml = mask.sum() * voxel_ml
            if ml < 0.5:
                continue
            kind = int(np.bincount(labels[mask]).argmax()) - 1
            # as DESIGN's match: a region of min_ml or more shares voxels with the lesion
            found = {t: bool(kept[t][mask].any()) for t in thresholds}
            rows.append((case["id"], kind, ml, found, typed_malignant(mask), float(lesion_p[mask].max())))
        print(f"{case['id']}: {count} lesions", flush=True)
    print("\nmalignant lesions under 3 ml (case, type, ml, max lesion p, found / typed malignant per threshold):")
    for case_id, kind, ml, found, malignant, top in rows:
        if kind in (1, 2, 3) and ml < 3.0:
            marks = " ".join(f"{t:g}:{'F' if found[t] else '-'}{'M' if malignant else 'b'}" for t in thresholds)
            print(f"  {case_id} type {kind} {ml:.2f} ml p {top:.3f}  {marks}")
    for t in thresholds:
        def share(select) -> str:
            chosen = [r for r in rows if select(r)]
            return f"{sum(r[3][t] for r in chosen)}/{len(chosen)}"
        print(f"threshold {t:g}: lesions {share(lambda r: True)}, under 2 ml {share(lambda r: r[2] < 2)}, "
              f"malignant {share(lambda r: r[1] in (1, 2, 3))}, malignant under 3 ml "
              f"{share(lambda r: r[1] in (1, 2, 3) and r[2] < 3)}; false regions >= {min_ml:g} ml "
              f"{false[t]} in {len(cases)} studies ({false_malignant[t]} typed malignant, "
              f"{false_inside[t]} centred over 3 mm inside the liver)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--train", type=int, default=120)
    gen.add_argument("--small", type=int, default=60)
    gen.add_argument("--validation", type=int, default=96)
    gen.add_argument("--processes", type=int, default=2)
    fit = sub.add_parser("train")
    fit.add_argument("--iterations", type=int, default=12000)
    fit.add_argument("--batch", type=int, default=4)
    fit.add_argument("--learning-rate", type=float, default=2e-3)
    fit.add_argument("--seed", type=int, default=0)
    judge = sub.add_parser("evaluate")
    judge.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.3, 0.1])
    judge.add_argument("--min-ml", type=float, default=0.3)
    judge.add_argument("--weights", type=Path, help="a checkpoint instead of WORK/finder.pt")
    for command in (gen, fit, judge):
        command.add_argument("--work", type=Path, default=Path("livernode-data/fine-finder"))
    args = parser.parse_args()
    if args.command == "generate":
        training = type_balanced_training_specs(args.train)
        small = small_lesion_training_specs(args.small, exclude=training) if args.small else []
        generate(tuning_specs(args.validation), args.work / "validation", args.processes)
        generate(training + small, args.work / "train", args.processes)
    elif args.command == "train":
        train(args.work, args.iterations, args.batch, args.learning_rate, args.seed)
    else:
        evaluate(args.work, args.thresholds, args.min_ml, args.weights)


if __name__ == "__main__":
    main()
