"""Make the benchmarks folder importable as ``benchmarks.<module>`` in these tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # The benchmarks folder is not installed with the package.
    sys.path.insert(0, str(REPO_ROOT))
