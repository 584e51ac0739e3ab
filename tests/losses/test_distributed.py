import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    init_file = folder / "init"
    environment = dict(os.environ)
    if sys.platform.startswith("linux"):
        # Gloo otherwise resolves the host name to pick an interface, which can take seconds.
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD_SIZE), str(init_file), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("config", ["batch-sum", "per-sample-mean-smooth", "ignore-weighted"])
def test_two_ranks_match_single_process(rank_results, config):
    worker = load_worker()
    model, images, targets, annotated = worker.build_inputs()
    single = worker.loss_and_gradients(model, images, targets, annotated, config)

    for rank, results in enumerate(rank_results):
        result = results[config]
        assert result["loss"].item() == pytest.approx(single["loss"].item(), rel=1e-5), rank
        # DDP has averaged the parameter gradients over the ranks.
        for gradient, expected in zip(result["parameters"], single["parameters"], strict=True):
            torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)
        # A rank's own inputs get world-size times their single-process gradient.
        share = slice(rank * 2, rank * 2 + 2)
        torch.testing.assert_close(
            result["images"], WORLD_SIZE * single["images"][share], rtol=1e-5, atol=1e-7
        )
