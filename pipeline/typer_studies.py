"""Where the lesion typer's training studies come from: phantoms or a labelled dataset folder, on
the working grid and, for a typer that reads its HU from the study (``FeatureGrid.from_study``),
with the study's own volumes too.

A study's own volumes are large (hundreds of MB for a thin-slice four-phase study), so they are
made or read one study at a time as :func:`pipeline.train_typer.fit_typer` asks for them, never
all held at once; phantoms are generated in worker processes a few studies ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from pipeline.model import Preprocessing
from pipeline.train import case_from_arrays
from pipeline.train_typer import TyperStudy
from pipeline.training_data import PhantomCaseSpec, make_cases, phantom_volumes
from pipeline.training_dataset import DatasetCase, load_case, read_case_arrays
from pipeline.typer_grid import StudyHU


def _phantom_study(args: tuple[PhantomCaseSpec, Preprocessing]) -> TyperStudy:
    import torch

    torch.set_num_threads(1)
    spec, prep = args
    volumes = phantom_volumes(spec)
    case = case_from_arrays(spec.case_id, volumes.hu, volumes.labels, volumes.geometry, prep)
    return TyperStudy(case, StudyHU(volumes.hu, volumes.geometry))


def phantom_typer_studies(
    specs: Sequence[PhantomCaseSpec],
    prep: Preprocessing,
    with_study: bool,
    processes: int = 2,
    progress: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
) -> Iterator[TyperStudy]:
    """The phantom studies of `specs`, in order. Without `with_study`, the working-grid cases
    (``make_cases``, read back from `cache_dir` when made before); with it, each study generated
    again with its own volumes (`processes` workers, at most ``processes + 1`` studies ahead)."""
    if not with_study:
        for case in make_cases(specs, prep, processes, progress, cache_dir=cache_dir):
            yield TyperStudy(case)
        return
    if processes <= 1:
        for spec in specs:
            yield _phantom_study((spec, prep))
        return
    with ProcessPoolExecutor(max_workers=processes) as pool:
        waiting = iter(specs)
        pending: deque[Future[TyperStudy]] = deque()
        for spec in waiting:
            pending.append(pool.submit(_phantom_study, (spec, prep)))
            if len(pending) > processes:
                break
        while pending:
            study = pending.popleft().result()
            following = next(waiting, None)
            if following is not None:
                pending.append(pool.submit(_phantom_study, (following, prep)))
            yield study


def dataset_typer_studies(cases: Sequence[DatasetCase], prep: Preprocessing, with_study: bool) -> Iterator[TyperStudy]:
    """The studies of a labelled dataset folder, read one at a time, in order (with `with_study`,
    with their own volumes)."""
    for case in cases:
        if not with_study:
            yield TyperStudy(load_case(case, prep))
            continue
        hu, labels, geometry = read_case_arrays(case)
        yield TyperStudy(case_from_arrays(case.case_id, hu, labels, geometry, prep), StudyHU(hu, geometry))
