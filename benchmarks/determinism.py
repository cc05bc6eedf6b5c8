"""Decoding learned bitstreams with another thread count: icmflow's fixed numerics against none.

For each image of a folder (default: the Kodak set in ../shared/samples/kodak), a trained
checkpoint encodes with `--encode-threads` torch threads, and another process decodes with each
of `--decode-threads`, twice in the same run: as icmflow codes (`fixed_numerics`), and with the
networks under the process's own thread count (the baseline: plain CompressAI `compress` /
`decompress`). Prints, per setting, the images whose decoded pixels differ from the encoder's,
the fraction of such pixels, and the images whose scale indexes differ (a desync).

    python benchmarks/determinism.py models/hyperprior-mse-4/checkpoint.pth.tar --images 8
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from icmflow.codecs.checkpoint import load_codec
from icmflow.coding import learned
from icmflow.coding.bitstream import unpack
from icmflow.datasets.images import read_rgb


def use(setting: str) -> None:
    """`fixed`: icmflow's fixed numerics; `baseline`: none."""
    if setting == "baseline":
        learned.fixed_numerics = lambda device: contextlib.nullcontext()


def decode_folder(threads: int, checkpoint: Path, folder: Path, setting: str) -> None:
    """(In a fresh process) decode every `.bin` of `folder` with `threads` torch threads."""
    use(setting)
    torch.set_num_threads(threads)
    codec = learned.LearnedCodec(load_codec(checkpoint))
    for stream in sorted(folder.glob("*.bin")):
        rgb, indexes = codec.decode_stream(unpack(stream.read_bytes()))
        np.save(stream.with_suffix(f".{threads}.npy"), rgb)
        stream.with_suffix(f".{threads}.idx").write_text(str(indexes))


def compare(args: argparse.Namespace, setting: str, images: list[Path]) -> None:
    use(setting)
    torch.set_num_threads(args.encode_threads)
    codec = learned.LearnedCodec(load_codec(args.checkpoint))
    with tempfile.TemporaryDirectory() as work:
        expected = {}
        for path in images:
            coded = codec.encode(read_rgb(path))
            (Path(work) / f"{path.stem}.bin").write_bytes(coded.data)
            expected[path.stem] = (coded.decoded, unpack(coded.data).index_check)
        for threads in args.decode_threads:
            command = [sys.executable, __file__, "--worker", str(threads), setting, work]
            subprocess.run([*command, str(args.checkpoint)], check=True)
            differing = desynced = pixels = changed = 0
            for stem, (decoded, index_check) in expected.items():
                diff = (np.load(Path(work) / f"{stem}.{threads}.npy") != decoded).any(axis=2)
                indexes = int((Path(work) / f"{stem}.{threads}.idx").read_text())
                differing += bool(diff.any())
                desynced += indexes != index_check
                pixels, changed = pixels + diff.size, changed + int(diff.sum())
            print(
                f"{setting:8s} encode {args.encode_threads} threads, decode {threads}: "
                f"{differing}/{len(images)} images differ, {changed / pixels:.2e} of pixels, "
                f"{desynced} with other scale indexes"
            )


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        threads, setting, folder, checkpoint = sys.argv[2:6]
        decode_folder(int(threads), Path(checkpoint), Path(folder), setting)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--folder", type=Path, default=Path("../shared/samples/kodak"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--encode-threads", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    images = sorted(args.folder.glob("*.png"))[: args.images]
    for setting in ("fixed", "baseline"):
        compare(args, setting, images)


if __name__ == "__main__":
    main()
