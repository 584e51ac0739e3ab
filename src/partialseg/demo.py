"""The embedded demo: train on a synthetic partially labeled collection, then evaluate."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from partialseg.data.synthetic import make_synthetic_collection, make_synthetic_test_case
from partialseg.metrics import dice_score, summarize_scores

logger = logging.getLogger(__name__)


def run_demo(
    output_dir: str | Path,
    *,
    epochs: int = 10,
    iterations_per_epoch: int = 25,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a MultiTalent model on three synthetic datasets and score a held-out case.

    The collection has three datasets of 6, 3 and 2 cases with partly overlapping
    classes: a nested class (liver tumour inside liver), and "liver" annotated
    under two protocols (with and without the tumour). Every class of every
    dataset gets its own output; the held-out case is scored against each
    dataset's protocol.

    Args:
        output_dir: Folder for the data, the model and the predictions.
        epochs: Training epochs.
        iterations_per_epoch: Optimizer steps per epoch.
        seed: Seed of data generation and training.
        progress: Show progress bars.

    Returns:
        The Dice summary of :func:`partialseg.metrics.summarize_scores`.
    """
    from partialseg.inference import Predictor
    from partialseg.training import Trainer, TrainingConfig

    output_dir = Path(output_dir)
    if (output_dir / "run").exists():
        # The demo owns its folder: an earlier, perhaps interrupted, run is replaced.
        logger.info("replacing the earlier demo run in %s", output_dir / "run")
        shutil.rmtree(output_dir / "run")
    datasets = make_synthetic_collection(output_dir / "data", seed=seed)
    config = TrainingConfig(
        datasets=[str(folder) for folder in datasets],
        output_dir=str(output_dir / "run"),
        patch_size=(32, 64, 64),
        epochs=epochs,
        iterations_per_epoch=iterations_per_epoch,
        batch_size=2,
        seed=seed,
        model_args={"features_per_stage": [8, 16, 32, 64]},
        # Every synthetic case is drawn from the same shape model, so augmentation
        # only slows convergence within the demo's budget.
        augment=False,
        progress=progress,
    )
    start = time.perf_counter()
    network = Trainer(config).fit()
    logger.info(
        "trained in %.1f s; model written to %s",
        time.perf_counter() - start,
        output_dir / "run" / "model",
    )

    image_path, references = make_synthetic_test_case(output_dir / "test", seed=seed + 1000)
    masks = Predictor(network, progress=progress).predict(image_path)
    scores = {
        name: dice_score(sitk.GetArrayViewFromImage(masks[name]), references[name])
        for name in network.class_names
    }
    return summarize_scores({"synthetic_test": scores})
