"""Benchmark the partial-label loss against MONAI and a loop implementation.

Measures forward + backward time and peak memory of one loss evaluation on logits
of shape (batch, classes, *size) with the 47 MultiTalent classes. Sample 0 comes
from the 13-class dataset Task017 and sample 1 from the 8-class dataset Task046,
so 21 of the 94 (sample, class) pairs are annotated. Every method runs in its own
subprocess so that its peak memory is measured alone:

- ``partialseg``: PartialLabelLoss with binary targets (B, C, *size).
- ``partialseg-labelmap``: PartialLabelLoss with integer label maps (B, *size),
  encoded by the registry inside the timed region.
- ``monai``: MONAI ``DiceLoss(sigmoid=True, batch=True, reduction="none")`` plus
  ``torch.nn.BCEWithLogitsLoss(reduction="none")``, masked by hand. Logits of
  unannotated pairs are replaced by -1e4 (sigmoid 0) and their targets by 0, so
  they add nothing to the pooled Dice sums. The per-pair BCE means are summed
  over annotated pairs only.
- ``loop``: the float64 loop implementation used by the tests.

On the CPU (Linux only), peak memory is the peak resident set size (VmHWM, reset
through /proc/self/clear_refs after the inputs were created) minus the resident
size at that reset. All methods get the same uint8 binary targets, and each
converts them inside the measured region as it needs. On CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory allocated for the inputs.

Usage: python benchmarks/loss_benchmark.py [--size 64 128 128] [--repeats 3]

NOTE: the ``--device cuda`` path has not been run yet.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch

METHODS = ("partialseg", "partialseg-labelmap", "monai", "loop")
SAMPLE_DATASETS = ("Task017_AbdominalOrganSegmentation", "Task046_AbdOrgSegm2")


def build_inputs(size, batch, device):
    """Return registry, dataset names, logits, label maps, binary targets, annotated."""
    from importlib.resources import files

    from partialseg.labels import LabelRegistry

    channels = json.loads(
        files("partialseg").joinpath("resources/multitalent_channels.json").read_text()
    )["channels"]
    registry = LabelRegistry()
    for dataset in dict.fromkeys(channel["dataset"] for channel in channels):
        classes = {
            c["region"]: c["merged_label_values"] for c in channels if c["dataset"] == dataset
        }
        registry.add_dataset(dataset, classes)
    names = [SAMPLE_DATASETS[b % len(SAMPLE_DATASETS)] for b in range(batch)]

    generator = torch.Generator().manual_seed(0)
    label_maps = torch.zeros(batch, *size, dtype=torch.long)
    for b, name in enumerate(names):
        values = torch.tensor(registry.label_values_of(name))
        picks = torch.randint(len(values), tuple(size), generator=generator)
        label_maps[b] = values[picks]
    logits = torch.randn(batch, registry.num_classes, *size, generator=generator)
    targets = registry.encode_batch(label_maps, names)
    annotated = registry.annotated_mask(names)
    return (
        registry,
        names,
        logits.to(device).requires_grad_(),
        label_maps.to(device),
        targets.to(device),
        annotated.to(device),
    )


def make_loss(method, registry, names, label_maps, targets, annotated):
    """Return a function of the logits that computes the method's loss."""
    if method == "partialseg":
        from partialseg.losses import PartialLabelLoss

        loss_fn = PartialLabelLoss()
        return lambda logits: loss_fn(logits, targets, annotated)
    if method == "partialseg-labelmap":
        from partialseg.losses import PartialLabelLoss

        loss_fn = PartialLabelLoss(registry=registry)
        return lambda logits: loss_fn(logits, label_maps, dataset_names=names)
    if method == "monai":
        return monai_masked_loss(targets, annotated)
    if method == "loop":
        from partialseg.losses._reference import reference_partial_label_loss

        return lambda logits: reference_partial_label_loss(
            [logits], [targets], annotated.cpu(), weights=[1.0]
        )
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def monai_masked_loss(targets, annotated):
    """Return MONAI Dice plus torch BCE with the partial-label masking done by hand."""
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True, batch=True, reduction="none", smooth_nr=0.0, smooth_dr=1e-7)
    bce_loss = torch.nn.BCEWithLogitsLoss(reduction="none")
    pair_mask = annotated.view(*annotated.shape, *[1] * (targets.ndim - 2))
    class_annotated = annotated.any(0)

    def loss(logits):
        float_targets = targets.float()
        masked_logits = torch.where(pair_mask, logits, -1e4)
        masked_targets = torch.where(pair_mask, float_targets, 0.0)
        per_class_dice = 1 - dice_loss(masked_logits, masked_targets).flatten()
        dice = torch.where(class_annotated, per_class_dice, 0).sum()
        per_pair_bce = bce_loss(logits, float_targets).flatten(2).mean(-1)
        bce = torch.where(annotated, per_pair_bce, 0).sum()
        return bce - dice

    return loss


def read_status_kib(key):
    """Return a field of /proc/self/status in KiB, such as VmRSS or VmHWM (Linux only)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def reset_peak_rss():
    """Reset the peak resident set size (VmHWM) to the current size and return it in bytes."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return read_status_kib("VmRSS") * 1024


def peak_memory_mib(device, baseline):
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    return (read_status_kib("VmHWM") * 1024 - baseline) / 2**20


def run_worker(args):
    """Time one method in this process and print a JSON result line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    registry, names, logits, label_maps, targets, annotated = build_inputs(
        args.size, args.batch, device
    )
    loss = make_loss(args.method, registry, names, label_maps, targets, annotated)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = reset_peak_rss()

    times, value = [], None
    for repeat in range(args.warmup + args.repeats):
        logits.grad = None
        start = time.perf_counter()
        output = loss(logits)
        output.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if repeat >= args.warmup:
            times.append(time.perf_counter() - start)
        value = float(output)
    result = {
        "method": args.method,
        "seconds": statistics.median(times),
        "peak_mib": peak_memory_mib(device, baseline),
        "loss": value,
    }
    print(json.dumps(result))


def run_all(args):
    """Run every method in a subprocess and print a Markdown table."""
    results = []
    for method in args.methods:
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--method",
            method,
            "--size",
            *map(str, args.size),
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(f"{method} failed:\n{completed.stderr}", file=sys.stderr)
            continue
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print_table(args, results)


def print_table(args, results):
    base = next((r for r in results if r["method"] == "partialseg"), None)
    shape = f"{args.batch} x 47 x {' x '.join(map(str, args.size))}"
    print(f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    print(
        f"Logits {shape}, device {args.device}, {args.threads} threads, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, "
        f"median of {args.repeats} runs after {args.warmup} warm-up"
    )
    print()
    print(
        "| method | forward+backward (s) | time ratio | peak memory (MiB) | memory ratio | loss |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        time_ratio = r["seconds"] / base["seconds"] if base else float("nan")
        memory_ratio = r["peak_mib"] / base["peak_mib"] if base else float("nan")
        print(
            f"| {r['method']} | {r['seconds']:.3f} | {time_ratio:.2f} | {r['peak_mib']:.0f} | "
            f"{memory_ratio:.2f} | {r['loss']:.6f} |"
        )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[64, 128, 128],
        help="spatial size of the logits in voxels (default: 64 128 128)",
    )
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="methods to run (default: all)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch CPU threads (default: torch's default)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        run_worker(arguments)
    else:
        run_all(arguments)
