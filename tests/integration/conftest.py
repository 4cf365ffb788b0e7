"""Fixtures of the node's integration tests: phantom studies and real peers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # tests.integration.* is imported from the repository root
    sys.path.insert(0, str(_REPO))

from tests.integration.peers import Orthanc, StoreSCP  # noqa: E402
from tests.integration.studies import Study, make_study  # noqa: E402


@pytest.fixture(scope="session")
def study_factory(tmp_path_factory: pytest.TempPathFactory):
    """make(seed, marker="") -> a small 4-phase phantom study written once per session and seed."""
    cache: dict[tuple[int, str, int], Study] = {}
    root = tmp_path_factory.mktemp("studies")

    def make(seed: int, marker: str = "", slices: int = 12) -> Study:
        key = (seed, marker, slices)
        if key not in cache:
            cache[key] = make_study(root / f"s{seed}-{marker or 'plain'}-{slices}", seed, marker, slices)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real Orthanc acting as the PACS, for the whole module."""
    peer = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield peer
    peer.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """DCMTK storescp acting as a second PACS, writing every arrival to its own file."""
    peer = StoreSCP(tmp_path / "storescp").start()
    yield peer
    peer.stop()
