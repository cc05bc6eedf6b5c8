"""Layered bitstreams of scalable codecs (`icmflow.codecs.scalable`): per image a machine-layer
file and an additional-layer file.

- The machine-layer file is the machine codec's own bitstream (`LearnedCodec` of its
  checkpoint, the format of `icmflow.coding.bitstream`). It decodes alone, to the image the
  machines get, and it is byte for byte the file the machine codec's own encode@ writes (coding
  is deterministic), so a scalable codec's coded dataset holds the additional layer only and
  its machine codec's coded dataset is its base layer.
- The additional-layer file has the same format: image size, the human layer's latent shape,
  the two checks, then its strings, the first being the 4-byte little-endian CRC-32 of the
  machine-layer file it was coded against: pairing it with another machine file is an error,
  never a wrong image. Its `index_check` chains the scale indexes of decoding the machine
  layer's ŷ and then the human layer's, its `pixel_check` covers the human image.

The human image needs both files (`decode(additional, machine)`); the checks are
`icmflow.coding.learned`'s. Bits per image: the machine file's, the additional file's, their sum.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icmflow.codecs.checkpoint import read_checkpoint
from icmflow.codecs.scalable import ScalableCodec, load_scalable
from icmflow.coding.bitstream import Bitstream, pack, strings_of_one_image, unpack
from icmflow.coding.coded_dataset import read_bytes_per_image
from icmflow.coding.image_codec import Coded
from icmflow.coding.learned import (
    LearnedCodec,
    check_decoded,
    check_encoder_decode,
    read_bitstream,
    to_tensor,
    to_uint8,
)
from icmflow.coding.reproducible import IndexRecorder, fixed_numerics, pixel_check
from icmflow.core.errors import BitstreamError
from icmflow.core.files import write_json


@dataclass(frozen=True)
class LayeredCoded:
    machine: bytes
    """The machine-layer file: decodes alone to `machine_image`."""
    additional: bytes
    """The additional-layer file: with `machine`, decodes to `human_image`."""
    machine_image: np.ndarray
    human_image: np.ndarray

    def bits(self) -> dict[str, int]:
        machine, additional = 8 * len(self.machine), 8 * len(self.additional)
        return {"machine": machine, "additional": additional, "total": machine + additional}


def machine_check(machine: bytes) -> bytes:
    """The additional layer's first string: CRC-32 of the machine-layer file."""
    return zlib.crc32(machine).to_bytes(4, "little")


class LayeredCodec:
    """A trained `ScalableCodec` coding layered bitstreams; as an `ImageCodec`, `encode` gives
    the additional-layer file and the human image."""

    suffix = ".bin"

    def __init__(self, model: ScalableCodec, *, name: str = "scalable"):
        self.model = model.eval()
        self.name = name
        self.machine = LearnedCodec(model.machine, name=f"{name} (machine layer)")
        self.device = self.machine.device

    @torch.no_grad()
    def _decode(self, machine: Bitstream, additional: Bitstream) -> tuple[np.ndarray, int]:
        recorder = IndexRecorder()
        with fixed_numerics(self.device), recorder.watching(self.model):
            x_hat = self.model.decompress_human(
                [[s] for s in machine.strings],
                machine.shape,
                [[s] for s in additional.strings[1:]],
                additional.shape,
            )
        return to_uint8(x_hat[..., : additional.height, : additional.width]), recorder.value

    @torch.no_grad()
    def encode_layers(self, rgb: np.ndarray) -> LayeredCoded:
        machine = self.machine.encode(rgb)
        machine_stream = unpack(machine.data)
        height, width = rgb.shape[:2]
        multiple = self.machine.multiple
        x = to_tensor(rgb, self.device)
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        recorder = IndexRecorder()
        with fixed_numerics(self.device), recorder.watching(self.model):
            output = self.model.compress_additional(
                x, [[s] for s in machine_stream.strings], machine_stream.shape
            )
        stream = Bitstream(
            height,
            width,
            tuple(int(d) for d in output["shape"]),
            (machine_check(machine.data), *strings_of_one_image(output)),
            recorder.value,
            0,
        )
        human, indexes = self._decode(machine_stream, stream)
        check_encoder_decode(self.name, indexes, recorder.value)
        additional = pack(replace(stream, pixel_check=pixel_check(human)))
        return LayeredCoded(machine.data, additional, machine.decoded, human)

    def encode(self, rgb: np.ndarray) -> Coded:
        coded = self.encode_layers(rgb)
        return Coded(coded.additional, coded.human_image)

    def decode_machine(self, machine: bytes, *, source: str = "machine layer") -> np.ndarray:
        """The machines' image, from the machine-layer file alone."""
        return self.machine.decode(machine, source=source)

    def decode(
        self,
        additional: bytes,
        machine: bytes,
        *,
        source: str = "additional layer",
        strict: bool = True,
    ) -> np.ndarray:
        """The human image from both files, verified as learned bitstreams are."""
        stream = read_bitstream(additional, source)
        machine_stream = read_bitstream(machine, f"{source}'s machine layer")
        if not stream.strings or stream.strings[0] != machine_check(machine):
            raise BitstreamError(
                f"{source}: coded against another machine-layer file than the one given; "
                "decode it with the machine codec's file of the same image"
            )
        human, indexes = self._decode(machine_stream, stream)
        check_decoded(stream, human, indexes, source=source, name=self.name, strict=strict)
        return human


@dataclass(frozen=True)
class LayeredCodecSpec:
    """Both layers' checkpoints (their SHA-256s keep a cached model from going stale)."""

    checkpoint: str
    sha256: str
    machine_checkpoint: str
    machine_sha256: str
    device: str = "cpu"
    suffix = ".bin"

    def build(self) -> LayeredCodec:
        return _load(self)


@cache
def _load(spec: LayeredCodecSpec) -> LayeredCodec:
    """One model per process and pair of checkpoints."""
    model = load_scalable(Path(spec.checkpoint), Path(spec.machine_checkpoint)).to(spec.device)
    return LayeredCodec(model, name=spec.checkpoint)


LAYERS = "layers.json"
"""In a scalable codec's coded dataset: which coded dataset holds its machine layer, and the
human layer's mode, m and parameter count."""


def write_layers(out: Path, spec: LayeredCodecSpec, machine: str) -> None:
    meta = read_checkpoint(Path(spec.checkpoint))["icmflow"]
    write_json(
        out / LAYERS,
        {
            "machine": machine,
            "mode": meta["scalable"]["mode"],
            "m": meta["model_args"].get("m"),
            "human_parameters": meta["human_parameters"],
            "layers": "bitstreams/ hold the additional layer; the machine layer is the "
            "machine codec's coded dataset (same files as this codec's encoder made)",
        },
    )


def read_layers(coded_dir: Path) -> dict:
    path = Path(coded_dir) / LAYERS
    if not path.is_file():
        raise BitstreamError(f"{path}: missing; {coded_dir} is no scalable codec's coded dataset")
    return json.loads(path.read_text())


def layer_bytes(machine_dir: Path, additional_dir: Path, split: str) -> dict[int, dict[str, int]]:
    """Per image id of `split`: the bytes of its machine-layer file (the machine codec's coded
    dataset), of its additional-layer file (the scalable codec's) and their sum."""
    machine = read_bytes_per_image(machine_dir, split)
    additional = read_bytes_per_image(additional_dir, split)
    missing = sorted(set(additional) - set(machine))
    if missing:
        raise BitstreamError(
            f"{machine_dir}: no machine-layer file for image ids {missing[:5]} of "
            f"{additional_dir}; encode the machine codec again"
        )
    return {
        image_id: {
            "machine": machine[image_id],
            "additional": size,
            "total": machine[image_id] + size,
        }
        for image_id, size in additional.items()
    }
