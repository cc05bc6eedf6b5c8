"""Speed of TCM against the hyperprior (bmshj2018-hyperprior) at the same N, M, crop and batch.

In one run, for each architecture: training steps/s through icmflow's trainer (`train_codec`,
the `mse` objective, random crops of synthetic images, after `--warmup` steps), and coding
images/s through the real entropy coder (`LearnedCodec.encode`, which also decodes once to
check, then `decode`) on `--images` images of `--code-size` px. TCM keeps its paper defaults
otherwise (config, head dims, its slice entropy model). Prints both and the ratios TCM/hyperprior.

    python benchmarks/codecs.py --N 32 --M 80 --crop 64 --batch 4          # CPU, small
    python benchmarks/codecs.py --device cuda --N 128 --M 320 --crop 256 --batch 8  # the papers'
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from icmflow.codecs.architectures import create_model
from icmflow.coding.learned import LearnedCodec
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, train_codec

BASELINE = "bmshj2018-hyperprior"


def textured(size: int, seed: int) -> np.ndarray:
    """A smooth RGB image worth coding (noise does not compress)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    channels = [128 + 90 * np.sin(xx / (7 + 3 * c) + phases[c]) * np.cos(yy / 11) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


class Crops(Dataset):
    def __init__(self, crop: int, count: int = 16):
        self.images = [torch.from_numpy(textured(crop, s)).permute(2, 0, 1) for s in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.images[index].float() / 255}


def steps_per_second(arch: str, args: argparse.Namespace) -> float:
    def train(steps: int, log: Path) -> float:
        model = create_model(arch, seed=0, N=args.N, M=args.M)
        settings = TrainSettings(
            steps=steps, batch_size=args.batch, lr=1e-4, aux_lr=1e-3, device=args.device
        )
        start = time.perf_counter()
        train_codec(model, OBJECTIVES["mse"](lmbda=0.01), Crops(args.crop), settings, log_path=log)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as work:
        warm = train(args.warmup, Path(work, "warm.csv"))
        total = train(args.warmup + args.steps, Path(work, "log.csv"))
    return args.steps / max(total - warm, 1e-9)


def images_per_second(arch: str, args: argparse.Namespace) -> float:
    model = create_model(arch, seed=0, N=args.N, M=args.M).to(args.device).eval()
    model.update(force=True)
    codec = LearnedCodec(model, name=arch)
    images = [textured(args.code_size, 100 + i) for i in range(args.images)]
    codec.decode(codec.encode(images[0]).data)  # warm-up
    start = time.perf_counter()
    for rgb in images:
        codec.decode(codec.encode(rgb).data)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--N", type=int, default=32)
    parser.add_argument("--M", type=int, default=80, help="a multiple of TCM's 5 slices")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--code-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(
        f"N={args.N} M={args.M} crop {args.crop} batch {args.batch}, {args.steps} steps; coding "
        f"{args.images} images of {args.code_size} px; {args.device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    rates = {}
    for arch in ("tcm", BASELINE):
        rates[arch] = steps_per_second(arch, args), images_per_second(arch, args)
        print(f"{arch:22s} {rates[arch][0]:8.3f} train steps/s {rates[arch][1]:8.3f} images/s")
    train_ratio = rates["tcm"][0] / rates[BASELINE][0]
    coding_ratio = rates["tcm"][1] / rates[BASELINE][1]
    print(f"tcm / {BASELINE}: training {train_ratio:.3f}x, coding {coding_ratio:.3f}x")


if __name__ == "__main__":
    main()
