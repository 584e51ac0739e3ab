"""The whole-volume prediction benchmark runs its arms and reports comparable numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SCRIPT = REPO_ROOT / "benchmarks" / "inference_benchmark.py"
# A coarse network grid (6 x 8 x 8 mm) and a tiny network keep every arm to seconds.
TINY = ["--patch", "16", "32", "32", "--features", "2", "4", "--spacing", "6", "8", "8"]


@pytest.fixture(scope="module")
def record(data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark") / "results.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--classes",
        "1",
        "3",
        "--arms",
        "partialseg",
        "partialseg-fp32",
        "partialseg-files",
        "monai",
        "--skip",
        "monai:1",
        "--skip",
        "partialseg-files:1",
        "--threads",
        "1",
        "--output",
        str(output),
        *TINY,
    ]
    environment = {**os.environ, "PARTIALSEG_DATA": str(data_root)}
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, env=environment, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(output.read_text()), completed.stdout


def test_every_arm_ran(record):
    data, _ = record
    ran = [(result["arm"], result["classes"]) for result in data["results"]]
    assert ran == [
        ("partialseg", 1),
        ("partialseg-fp32", 1),
        ("partialseg", 3),
        ("partialseg-fp32", 3),
        ("partialseg-files", 3),
        ("monai", 3),
    ]
    assert not [result for result in data["results"] if "error" in result]


def test_arms_agree_with_partialseg(record):
    data, _ = record
    agreement = {
        (result["arm"], result["classes"]): result.get("agreement_with_partialseg")
        for result in data["results"]
    }
    assert agreement[("partialseg-fp32", 3)] > 0.9999
    # The files arm runs the same prediction and writes what it returns.
    assert agreement[("partialseg-files", 3)] == 1.0
    # MONAI places its windows differently, so voxels near 0.5 can differ.
    assert agreement[("monai", 3)] > 0.9


def test_memory_is_measured(record):
    data, _ = record
    for result in data["results"]:
        assert result["peak_rss"] > result["baseline_rss"] > 0
        assert result["mask_bytes"] == 512 * 512 * 48


def test_summary_table_printed(record):
    _, stdout = record
    assert "| arm | classes | wall s |" in stdout
    assert "| monai | 3 |" in stdout
