"""One rank of a two-process gloo run of the partial-label loss under DDP.

``test_distributed.py`` starts two of these and compares what they save with a
single-process run on the concatenated batch.

Usage: python ddp_worker.py RANK WORLD_SIZE INIT_FILE OUTPUT_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from partialseg.losses import PartialLabelLoss

NUM_SAMPLES = 4
NUM_CLASSES = 3
CONFIGS = {
    "batch-sum": {},
    "per-sample-mean-smooth": {"batch_dice": False, "class_reduction": "mean", "smooth": 0.5},
    "ignore-weighted": {"ignore_index": 255, "bce_weight": 0.5, "dice_weight": 2.0},
}


class TwoLevelNet(nn.Module):
    """A 1x1x1 convolution with a second, pooled deep-supervision output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, NUM_CLASSES, kernel_size=1)

    def forward(self, x):
        logits = self.conv(x)
        return [logits, nn.functional.avg_pool3d(logits, 2)]


def build_inputs():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TwoLevelNet()
    images = torch.randn(NUM_SAMPLES, 2, 4, 4, 4, generator=generator)
    targets = (torch.rand(NUM_SAMPLES, NUM_CLASSES, 4, 4, 4, generator=generator) > 0.6).long()
    targets[0, 1, 0] = 255
    # Class 2 is annotated only by samples of rank 1, class 0 by samples of both ranks.
    annotated = torch.tensor(
        [[True, True, False], [True, False, False], [True, True, True], [False, True, True]]
    )
    return model, images, targets, annotated


def loss_and_gradients(model, images, targets, annotated, config):
    loss_fn = PartialLabelLoss(deep_supervision_weights=[0.7, 0.3], **CONFIGS[config])
    if loss_fn.ignore_index is None:
        targets = torch.where(targets == 255, 0, targets)
    model.zero_grad()
    images = images.clone().requires_grad_()
    loss = loss_fn(model(images), targets, annotated)
    loss.backward()
    return {
        "loss": loss.detach(),
        "parameters": [p.grad.clone() for p in model.parameters()],
        "images": images.grad.clone(),
    }


def main():
    rank, world_size = int(sys.argv[1]), int(sys.argv[2])
    init_file, output_dir = Path(sys.argv[3]), Path(sys.argv[4])
    dist.init_process_group(
        "gloo", init_method=init_file.as_uri(), rank=rank, world_size=world_size
    )
    model, images, targets, annotated = build_inputs()
    model = DistributedDataParallel(model)
    share = slice(rank * NUM_SAMPLES // world_size, (rank + 1) * NUM_SAMPLES // world_size)
    results = {
        config: loss_and_gradients(model, images[share], targets[share], annotated[share], config)
        for config in CONFIGS
    }
    torch.save(results, output_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
