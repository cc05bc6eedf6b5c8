"""Machine bitstreams of compressed-domain codecs (`icmflow.codecs.compressed_domain`).

A compressed-domain codec's coded dataset holds its human images as a learned codec's does and,
for its task, one machine bitstream per image of the coded split under `machine/`:

- `machine/<split>/<stem>.bin`: the hyper-latent, the gate's selected channels of ŷ (coded
  with their own scales) and the gate's decision, in the format of `icmflow.coding.bitstream`;
- `machine/<split>.csv`: per image, its bytes, pixels, bpp, the channels kept and the file's
  SHA-256, which `predict_split` checks every file against (`icmflow.coding.manifest`).

The machine rate counts these files (headers included). `MachineCodec.decode` returns the task's
prediction from a file alone, in the task network's classes: a class map, a foreground
probability map, or detections.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from icmflow.codecs.checkpoint import load_codec, read_checkpoint
from icmflow.codecs.compressed_domain import (
    TASK_BRANCH,
    CompressedDomainCodec,
    MachineCoded,
    task_tail,
)
from icmflow.coding.learned import PAD_MULTIPLE, read_bitstream, to_tensor
from icmflow.coding.manifest import SHA256, check_file, require_record, sha256
from icmflow.coding.reproducible import fixed_numerics
from icmflow.core.completion import require_complete
from icmflow.core.errors import BitstreamError, CheckpointError
from icmflow.core.files import write_bytes, write_csv
from icmflow.core.storage import location
from icmflow.datasets.file_names import output_stem
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.vision.tasks.base import Detections, Prediction

MACHINE = "machine"
FIELDS = ("image_id", "file_name", "bytes", "pixels", "bpp", "kept_channels", SHA256)


class MachineCodec:
    """A trained compressed-domain codec coding and reading one task's machine bitstreams."""

    def __init__(self, model: CompressedDomainCodec, task: str):
        self.model, self.task = model.eval(), task
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> MachineCoded:
        height, width = rgb.shape[:2]
        x = to_tensor(rgb, self.device)
        x = F.pad(x, (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE), mode="replicate")
        with fixed_numerics(self.device):
            return self.model.compress_machine(x, self.task, (height, width))

    @torch.no_grad()
    def decode(self, data: bytes, *, source: str = "machine bitstream") -> Prediction:
        stream = read_bitstream(data, source)
        try:
            with fixed_numerics(self.device):
                output = self.model.decompress_machine(data, self.task)
        except BitstreamError as err:
            raise BitstreamError(f"{source}: {err}") from None
        height, width = stream.height, stream.width
        if "foreground" in output:
            return output["foreground"][0, :height, :width].cpu().numpy()
        if "logits" in output:
            logits = output["logits"][0, :, :height, :width]
            return logits.argmax(0).cpu().numpy().astype(np.int64)
        found = output["detections"][0]
        boxes = found["boxes"].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return Detections(
            boxes=boxes.cpu().numpy().astype(np.float64),
            scores=found["scores"].cpu().numpy().astype(np.float64),
            classes=found["labels"].cpu().numpy().astype(np.int64),
        )


def load_machine_codec(
    checkpoint: Path, network: nn.Module, task: str, device: str = "cpu", *, foreground=False
) -> MachineCodec:
    """The codec in `checkpoint` with its trained branch for `task` on `network` (the task's
    torchvision model, whose architecture the branch's tail is; `foreground`: a foreground
    extraction task, one sigmoid output)."""
    branch = read_checkpoint(checkpoint).get("icmflow", {}).get(TASK_BRANCH)
    if branch is None:
        raise CheckpointError(
            f"{checkpoint}: holds no compressed-domain task branch; train the codec with "
            "family compressed-domain"
        )
    tail = task_tail(network, foreground=foreground)
    model = CompressedDomainCodec(load_codec(checkpoint), {task: tail}, task)
    try:
        model.branches[task].load_state_dict(branch)
    except RuntimeError as err:
        raise CheckpointError(
            f"{checkpoint}: its task branch does not fit task {task!r}'s network: {str(err)[:300]}"
        ) from None
    return MachineCodec(model.to(device), task)


def write_machine_split(
    codec: MachineCodec, dataset: PreparedDataset, out: Path, split: str
) -> dict:
    """Code every image of `dataset` into `out/machine/<split>/`; the split's rate summary."""
    rows = []
    for image in tqdm(dataset.images, desc=f"machine bitstreams {split}", unit="img"):
        stem = output_stem(image["file_name"], dataset.path)
        coded = codec.encode(read_rgb(dataset.image_path(image)))
        write_bytes(out / MACHINE / split / f"{stem}.bin", coded.data)
        pixels = image["width"] * image["height"]
        rows.append(
            {
                "image_id": image["id"],
                "file_name": f"{stem}.bin",
                "bytes": len(coded.data),
                "pixels": pixels,
                "bpp": 8 * len(coded.data) / pixels,
                "kept_channels": int(coded.keep.sum()),
                SHA256: sha256(coded.data),
            }
        )
    write_csv(out / MACHINE / f"{split}.csv", rows, FIELDS)
    return machine_summary(rows)


def machine_summary(rows: list[dict]) -> dict:
    """The rate of machine bitstream rows (`FIELDS`): over all images, not a mean of bpps."""
    if not rows:
        raise BitstreamError("no machine bitstreams to summarise: the coded split is empty")
    bits = 8 * sum(int(r["bytes"]) for r in rows)
    return {
        "images": len(rows),
        "bpp": bits / sum(int(r["pixels"]) for r in rows),
        "mean_kept_channels": float(np.mean([int(r["kept_channels"]) for r in rows])),
        "bpp_definition": "total bits of the machine bitstream files / total pixels",
    }


@dataclass(frozen=True)
class MachineFile:
    """One image's row of `machine/<split>.csv`, its file's path resolved."""

    image_id: int
    path: Path
    bytes: int
    pixels: int
    kept_channels: int
    sha256: str


def machine_files(coded_dir: Path | str, split: str) -> list[MachineFile]:
    """The machine bitstreams of one split of a complete coded dataset, by image."""
    require_complete(coded_dir, "coded dataset", "run (or rerun) its `icmflow encode` first")
    table = location(coded_dir) / MACHINE / f"{split}.csv"
    if not table.is_file():
        raise BitstreamError(
            f"{table}: missing; {coded_dir} is no compressed-domain codec's coded dataset"
        )
    rows = list(csv.DictReader(io.StringIO(table.read_text(), newline="")))
    require_record(table, rows, (SHA256,), f"rerun `icmflow encode {location(coded_dir).name}`")
    folder = location(coded_dir) / MACHINE / split
    return [
        MachineFile(
            int(r["image_id"]),
            folder / r["file_name"],
            int(r["bytes"]),
            int(r["pixels"]),
            int(r["kept_channels"]),
            r[SHA256],
        )
        for r in rows
    ]


def predict_split(
    codec: MachineCodec, coded_dir: Path | str, split: str
) -> tuple[dict[int, Prediction], dict]:
    """The task's predictions decoded from one split's machine bitstreams alone, by image id,
    and their rate (`machine_summary`)."""
    files = machine_files(coded_dir, split)
    fix = f"rerun `icmflow encode {location(coded_dir).name}`"
    predictions = {}
    for found in tqdm(files, desc=f"machine predictions {split}", unit="img"):
        data = check_file(found.path, found.bytes, found.sha256, fix)
        predictions[found.image_id] = codec.decode(data, source=str(found.path))
    return predictions, machine_summary([vars(f) for f in files])
