"""Train one MultiTalent network on several partially labeled CT datasets.

Every class of every dataset gets its own sigmoid output, the loss counts only
the classes each sample's dataset annotates, and cases are drawn with
probability proportional to n_d ** -0.5. Without --dataset the script writes the
synthetic collection of three small datasets and trains a tiny network on it
(a few minutes on a two-core CPU).

    python examples/train_multitalent.py -o runs/multitalent
    python examples/train_multitalent.py -o runs/multitalent --resume   # after a crash

Real datasets are folders in nnU-Net raw layout (dataset.json, imagesTr, labelsTr):

    python examples/train_multitalent.py --dataset Dataset001_Liver \
        --dataset Dataset009_Spleen -o runs/multitalent --epochs 1000 --iterations 250
    torchrun --standalone --nproc_per_node=2 examples/train_multitalent.py \
        --dataset Dataset001_Liver --dataset Dataset009_Spleen -o runs/ddp
"""

import argparse
import logging
from pathlib import Path

from partialseg.data.synthetic import make_synthetic_collection
from partialseg.training import Trainer, TrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="dataset folder (repeat)")
    parser.add_argument("-o", "--output", default="runs/multitalent", help="output folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=25, help="steps per epoch")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    output = Path(args.output)
    datasets = args.dataset
    if not datasets:
        datasets = [str(folder) for folder in make_synthetic_collection(output / "data")]

    config = TrainingConfig(
        datasets=datasets,
        output_dir=str(output / "run"),
        patch_size=(32, 64, 64),
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
        model_args={"features_per_stage": [8, 16, 32, 64]},
    )
    trainer = Trainer(config)
    network = trainer.fit(resume=args.resume)

    if trainer.is_main:
        print(f"{network.num_classes} outputs, one per dataset class:")
        for name in network.class_names:
            print(f"  {name}")
        print(f"model: {output / 'run' / 'model'}, last loss {trainer.history[-1]['loss']:.3f}")


if __name__ == "__main__":
    main()
