"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CT data folder: ``PARTIALSEG_DATA`` or ``../shared/data`` beside the repo."""
    root = Path(os.environ.get("PARTIALSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "collection").is_dir():
        pytest.fail(
            f"real CT data not found at {root}; set PARTIALSEG_DATA to the data folder "
            "(with collection/, openkbp/, totalseg/, radiomics_lung/)"
        )
    return root


@pytest.fixture(scope="session")
def synthetic_collection(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo's synthetic collection with one or two cases per dataset."""
    from partialseg.data.synthetic import make_synthetic_collection

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_collection(root, cases_per_dataset=(2, 1, 1), seed=0)
