"""Coded-dataset generation: icmflow's `encode_dataset` on a dask cluster against a plain loop.

Baseline (the usual research script): one process, torch using every core, for each image in
turn: read it, `model.compress`, `model.decompress`, crop, write the decoded PNG and the
bitstream. icmflow: `encode_dataset` (the `encode@` stage) on a LocalCluster of single-threaded
worker processes, one per core (`--workers`), each holding the model. What makes it faster:

- the workers code whole images in parallel, so the serial parts (entropy coding, PNG writing)
  of one overlap another's transforms; on a GPU (`--device cuda`) the workers share it, one's
  GPU transforms overlapping another's CPU entropy coding;
- on a CPU, `icmflow.codecs.cpu_inference`: the transforms channels-last, GDN blocked, the
  image layer as a sub-pixel convolution; scale indexes by one sorted search;
- decoded PNGs at zlib level 1, and workers without dask's MALLOC_TRIM_THRESHOLD_.

A third line, the baseline's loop with the model sped up as icmflow's workers have it, shows
how much of the ratio is the faster model and how much the parallel workers. Same codec
(random weights, `--seed`), images, device; one run; images/s of each and the ratios.
icmflow's time includes its workers loading the checkpoint and its checks (the encoder's own
decode, index and pixel checksums in every bitstream); the cluster's start (worker processes
and their imports) is not timed, the baseline's model is built and warmed up on one image
before its clock starts.

    python benchmarks/encode.py                           # Kodak, bmshj2018-hyperprior N=128 M=192
    python benchmarks/encode.py --images 48 --workers 2
    python benchmarks/encode.py --device cuda --workers 4 # GPU: workers share the device
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import save_untrained
from icmflow.codecs.cpu_inference import speed_up_transforms
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.coding.learned import LearnedCodecSpec, to_tensor, to_uint8
from icmflow.core.resume import file_digest
from icmflow.datasets.images import read_header, read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.runtime.cluster import dask_client

SAMPLES = Path(
    os.environ.get("ICMFLOW_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples")
)


def make_model(arch: str, n: int, m: int, seed: int, gain: float) -> torch.nn.Module:
    """Random weights; `gain` scales the analysis output so the latents carry the image."""
    model = create_model(arch, seed=seed, N=n, M=m).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(gain)
    model.update(force=True)
    return model


def dataset_of(files: list[Path], folder: Path) -> PreparedDataset:
    """`files` as a prepared split (no annotations), one uniquely named link per image."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images = []
    for i, file in enumerate(files):
        link = images_dir / f"{i:05d}{file.suffix}"
        link.symlink_to(file.resolve())
        header = read_header(link)
        images.append(
            {"id": i + 1, "file_name": link.name, "width": header.width, "height": header.height}
        )
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    write_prepared(folder / "val.json", data, image_root=images_dir, final_dir=folder)
    return PreparedDataset.load(folder / "val.json")


@torch.no_grad()
def baseline(model: torch.nn.Module, files: list[Path], out: Path, device: str) -> None:
    """Read, compress, decompress, write: one image after another."""
    out.mkdir(parents=True)
    for i, file in enumerate(files):
        rgb = read_rgb(file)
        height, width = rgb.shape[:2]
        x = F.pad(to_tensor(rgb, device), (0, -width % 64, 0, -height % 64), mode="replicate")
        coded = model.compress(x)
        x_hat = model.decompress(coded["strings"], coded["shape"])["x_hat"]
        write_png(out / f"{i:05d}.png", to_uint8(x_hat[..., :height, :width]))
        (out / f"{i:05d}.bin").write_bytes(pickle.dumps((coded["strings"], coded["shape"])))
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-dir", type=Path, default=SAMPLES / "kodak")
    parser.add_argument("--images", type=int, default=24, help="cycled through the folder")
    parser.add_argument("--arch", default="bmshj2018-hyperprior")
    parser.add_argument("-N", type=int, default=128)
    parser.add_argument("-M", type=int, default=192)
    parser.add_argument("--gain", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="baseline's")
    parser.add_argument("--images-per-task", type=int, default=2)
    args = parser.parse_args()

    available = sorted(p for p in args.images_dir.iterdir() if p.suffix in {".png", ".jpg"})
    if not available:
        raise SystemExit(f"{args.images_dir}: no .png or .jpg images (set --images-dir)")
    files = [available[i % len(available)] for i in range(args.images)]
    torch.set_num_threads(args.threads)
    model = make_model(args.arch, args.N, args.M, args.seed, args.gain).to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "codec.pth.tar"
        save_untrained(checkpoint, model, arch=args.arch, model_args={"N": args.N, "M": args.M})
        spec = LearnedCodecSpec(str(checkpoint), file_digest(checkpoint), args.device)
        split = dataset_of(files, tmp / "source")

        baseline(model, files[:1], tmp / "warm-up", args.device)
        start = time.perf_counter()
        baseline(model, files, tmp / "baseline", args.device)
        base_s = time.perf_counter() - start

        if args.device == "cpu":
            speed_up_transforms(model)
        baseline(model, files[:1], tmp / "warm-up-fast", args.device)
        start = time.perf_counter()
        baseline(model, files, tmp / "baseline-fast", args.device)
        fast_s = time.perf_counter() - start

        with dask_client(None, n_workers=args.workers) as client:
            client.run(importlib.import_module, encode_dataset.__module__)  # the cluster's start
            start = time.perf_counter()
            encode_dataset(
                spec,
                {"val": split},
                tmp / "icmflow",
                client=client,
                images_per_task=args.images_per_task,
            )
            ours_s = time.perf_counter() - start

    n = len(files)
    print(f"{n} images from {args.images_dir}, {args.arch} N={args.N} M={args.M}, {args.device}")
    for label, seconds in (
        (f"baseline loop ({args.threads} torch threads)", base_s),
        ("baseline loop, icmflow's sped-up model", fast_s),
        (f"icmflow encode ({args.workers} workers)", ours_s),
    ):
        print(f"{label + ':':<42}{n / seconds:7.2f} images/s")
    print(f"ratio icmflow / baseline: {base_s / ours_s:.2f}x")
    print(f"ratio sped-up loop / baseline: {base_s / fast_s:.2f}x")


if __name__ == "__main__":
    main()
