"""Training throughput: icmflow's trainer against the loop of CompressAI's `examples/train.py`.

Baseline, as that script does it: `compressai.datasets.ImageFolder` over the image files (every
sample decoded from its file again), `RandomCrop` + `ToTensor`, a shuffled DataLoader with its
default 4 worker processes (`--baseline-workers`; pinned memory on CUDA), `RateDistortionLoss`,
`net_aux_optimizer`'s two Adams, `clip_grad_norm_`, the main step, then `aux_loss()` backward and
its step, and a `.item()` print (here: a read) every 10 steps. icmflow: `train_codec` on
`TrainingCrops` of the same images with `train`'s default settings from `TrainParams` (what a
codec entry gets unless params.yaml says otherwise). Same architecture and initial weights,
images, crop, batch, steps, λ, learning rates and device, in this one run; the two take turns
(`--repeats`) so that a machine busy with other work slows both alike. Each timed run includes
its own data set-up (dataset, DataLoader, workers, icmflow's decoded-image cache) and excludes
one warm-up run of each. Prints images/s and the ratio.

    python benchmarks/train.py                                     # Kodak, CPU, small codec
    python benchmarks/train.py --device cuda --N 128 --M 192 --patch 256 --batch 16 --steps 200
    python benchmarks/train.py --precision bfloat16                # also icmflow in bfloat16
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from compressai.datasets import ImageFolder
from compressai.losses import RateDistortionLoss
from compressai.optimizers import net_aux_optimizer
from torch.utils.data import DataLoader
from torchvision import transforms

from icmflow.codecs.architectures import create_model
from icmflow.datasets.images import read_header
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.params import TrainParams
from icmflow.runtime.devices import resolve_device
from icmflow.training.data import TrainingCrops, fits_in_memory
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, train_codec

SAMPLES = Path(
    os.environ.get("ICMFLOW_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples")
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compressai_loop(model, folder: Path, args, device: torch.device) -> None:
    """`examples/train.py`'s data pipeline and `train_one_epoch`, for `args.steps` steps."""
    train_transforms = transforms.Compose(
        [transforms.RandomCrop(args.patch), transforms.ToTensor()]
    )
    dataset = ImageFolder(folder, split="train", transform=train_transforms)
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        num_workers=args.baseline_workers,
        shuffle=True,
        pin_memory=device.type == "cuda",
    )
    conf = {
        "net": {"type": "Adam", "lr": args.lr},
        "aux": {"type": "Adam", "lr": args.aux_lr},
    }
    optimizers = net_aux_optimizer(model, conf)
    optimizer, aux_optimizer = optimizers["net"], optimizers["aux"]
    criterion = RateDistortionLoss(lmbda=args.lmbda)
    model.train()
    step = 0
    while step < args.steps:
        for i, d in enumerate(loader):
            d = d.to(device)
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            out_net = model(d)
            out_criterion = criterion(out_net, d)
            out_criterion["loss"].backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            if i % 10 == 0:  # the script prints these
                out_criterion["loss"].item(), aux_loss.item()
            step += 1
            if step == args.steps:
                break


def icmflow_run(model, dataset: PreparedDataset, args, device: torch.device, out: Path, **kw):
    defaults = TrainParams()
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        aux_lr=args.aux_lr,
        clip_max_norm=args.clip,
        num_workers=defaults.num_workers,
        device=str(device),
        channels_last=defaults.channels_last,
        precision=kw.get("precision", defaults.precision),
        save_every=args.steps + 1,
    )
    cache = defaults.cache_images
    crops = TrainingCrops(
        dataset, {}, args.patch, cache=fits_in_memory(dataset, 0) if cache == "auto" else cache
    )
    train_codec(model, OBJECTIVES["mse"](lmbda=args.lmbda), crops, settings, log_path=out)


def prepared(images: list[Path], out: Path) -> PreparedDataset:
    """The images as a prepared dataset (in memory), as `icmflow prepare` would list them."""
    records = []
    for i, path in enumerate(images, start=1):
        header = read_header(path)
        records.append(
            {"id": i, "file_name": path.name, "width": header.width, "height": header.height}
        )
    data = {"images": records, "annotations": [], "categories": [], "icmflow": {}}
    data["icmflow"]["image_root"] = str(images[0].parent.resolve())
    return PreparedDataset(out / "images.json", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SAMPLES / "kodak")
    parser.add_argument("--arch", default="bmshj2018-hyperprior")
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--M", type=int, default=96)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lmbda", type=float, default=0.013)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--aux-lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--baseline-workers", type=int, default=4, help="its script's default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="*", default=[], choices=["bfloat16"])
    args = parser.parse_args()
    files = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".png", ".jpg"))
    if not files:
        raise SystemExit(f"no images in {args.images}: pass --images or set ICMFLOW_SAMPLES")
    device = resolve_device(args.device, "--device")
    initial = create_model(args.arch, seed=0, N=args.N, M=args.M)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train").mkdir()
        for path in files:
            (tmp / "train" / path.name).symlink_to(path.resolve())
        dataset = prepared(files, tmp)
        runs = {"compressai": lambda m: compressai_loop(m, tmp, args, device)}
        runs["icmflow"] = lambda m: icmflow_run(m, dataset, args, device, tmp / "log.csv")
        for precision in args.precision:
            runs[f"icmflow {precision}"] = lambda m, p=precision: icmflow_run(
                m, dataset, args, device, tmp / "log.csv", precision=p
            )
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeats + 1):
            for name, run in runs.items():
                model = copy.deepcopy(initial).to(device)
                synchronize(device)
                start = time.perf_counter()
                run(model)
                synchronize(device)
                if repeat:  # the first round warms up
                    seconds[name].append(time.perf_counter() - start)
    defaults = TrainParams()
    print(
        f"{args.arch} N={args.N} M={args.M}, {len(files)} images from {args.images}, crop "
        f"{args.patch}, batch {args.batch}, {args.steps} steps, {device}, torch threads "
        f"{torch.get_num_threads()}; baseline workers {args.baseline_workers}; icmflow defaults: "
        f"cache_images={defaults.cache_images}, channels_last={defaults.channels_last}, "
        f"num_workers={defaults.num_workers}, precision={defaults.precision}"
    )
    rate = {n: args.steps * args.batch / statistics.median(s) for n, s in seconds.items()}
    for name, images_per_s in rate.items():
        ratio = images_per_s / rate["compressai"]
        times = ", ".join(f"{s:.2f}" for s in seconds[name])
        print(f"{name:>18}: {images_per_s:7.2f} images/s ({ratio:.2f}x; runs {times} s)")


if __name__ == "__main__":
    main()
