import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = (
    Path(os.environ.get("PARTIALSEG_DATA", REPO.parent / "shared" / "data")).parent / "reference"
)


@pytest.fixture(scope="session")
def published_state_dicts():
    """Key names and shapes of the two published MultiTalent networks."""
    path = REFERENCE / "net_state_dicts.json"
    if not path.is_file():
        pytest.skip(f"published state-dict shapes not found at {path}")
    return json.loads(path.read_text())
