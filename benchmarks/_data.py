"""Location of the real CT data that benchmarks read."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Return the data folder from ``PARTIALSEG_DATA`` or ``../shared/data`` beside the repo."""
    root = Path(os.environ.get("PARTIALSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        raise SystemExit(
            f"data folder not found: {root}; set PARTIALSEG_DATA to the folder with "
            "collection/, openkbp/, totalseg/ and radiomics_lung/"
        )
    return root
