"""Fine-tune a pretrained MultiTalent network on a new dataset.

The recipe of Ulrich et al. (MICCAI 2023) loads every pretrained weight. Classes
whose "<dataset>/<class>" name the model already has keep their heads, and the
others get new ones. Training first updates only the heads (AdamW, learning rate
rising to 5e-4), then warms up the whole network (SGD, rising to 1e-2), then
decays the learning rate. The new data is prepared with the pretrained model's
spacing, patch size and CT statistics.

Without --pretrained the script first trains a tiny model on two synthetic
datasets, then fine-tunes it on the second and a third one, so the second
dataset's heads are kept and the third's are new (a few minutes on a two-core CPU).

    python examples/finetune.py -o runs/finetune
    python examples/finetune.py --pretrained runs/multitalent/run/model \
        --dataset Dataset050_Kidney -o runs/kidney --head-epochs 10 --warmup-epochs 50 \
        --epochs 1000 --iterations 250
"""

import argparse
import logging
from pathlib import Path

from partialseg.data.synthetic import make_synthetic_collection
from partialseg.training import FineTuneConfig, FineTuner, Trainer, TrainingConfig


def pretrain_on_synthetic(output: Path) -> tuple[str, list[str]]:
    """Train a tiny model on two synthetic datasets; return it and the fine-tuning datasets."""
    first, second, third = make_synthetic_collection(output / "data")
    config = TrainingConfig(
        datasets=[str(first), str(second)],
        output_dir=str(output / "pretrained"),
        patch_size=(32, 64, 64),
        epochs=5,
        iterations_per_epoch=20,
        model_args={"features_per_stage": [8, 16, 32, 64]},
    )
    Trainer(config).fit()
    return str(output / "pretrained" / "model"), [str(second), str(third)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", help="model folder or Hugging Face Hub repo id")
    parser.add_argument("--dataset", action="append", help="dataset folder (repeat)")
    parser.add_argument("-o", "--output", default="runs/finetune", help="output folder")
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of poly decay")
    parser.add_argument("--iterations", type=int, default=20, help="steps per epoch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    output = Path(args.output)
    if args.pretrained:
        pretrained, datasets = args.pretrained, args.dataset
    else:
        pretrained, datasets = pretrain_on_synthetic(output)

    config = FineTuneConfig(
        pretrained=pretrained,
        datasets=datasets,
        output_dir=str(output / "tuned"),
        head_epochs=args.head_epochs,
        warmup_epochs=args.warmup_epochs,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
    )
    tuner = FineTuner(config)
    tuner.fit()

    for record in tuner.history:
        print(
            f"epoch {record['epoch']:3d} {record['phase']:7s} lr {record['lr']:.2e} "
            f"loss {record['loss']:.3f}"
        )
    print(f"fine-tuned model: {output / 'tuned' / 'model'}")


if __name__ == "__main__":
    main()
