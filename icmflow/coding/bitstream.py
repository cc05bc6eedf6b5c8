"""The learned codecs' bitstream file: everything needed to decode one image, and its checks.

Layout: a format byte (`VERSION`), then unsigned LEB128 varints: height, width, the number of
latent-shape dimensions and each dimension; then two 4-byte little-endian checks (below); then
the number of strings and each string's length and bytes. The header costs about 20 bytes;
bpp counts the whole file, header and checks included.

The checks are what the decoder must reproduce (see `icmflow.coding.reproducible`):

- `index_check`: CRC-32 of every scale index the entropy coder used while encoding. The rANS
  decoder must use exactly these indexes; if its own computation of them differs (another
  checkpoint, other floating-point behaviour), it desyncs and returns garbage without error.
- `pixel_check`: CRC-32 of the decoded 8-bit pixels as the encoder decoded them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from icmflow.core.errors import BitstreamError

VERSION = 2
"""Version 1 (icmflow 0.1, no format byte and no checks) is not read."""


@dataclass(frozen=True)
class Bitstream:
    height: int
    width: int
    shape: tuple[int, ...]
    strings: tuple[bytes, ...]
    index_check: int
    pixel_check: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError("bitstream is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def check(self) -> int:
        return struct.unpack("<I", self.take(4))[0]


def pack(stream: Bitstream) -> bytes:
    parts = [bytes([VERSION]), _varint(stream.height), _varint(stream.width)]
    parts += [_varint(len(stream.shape)), *(_varint(d) for d in stream.shape)]
    parts.append(struct.pack("<II", stream.index_check, stream.pixel_check))
    parts.append(_varint(len(stream.strings)))
    for string in stream.strings:
        parts += [_varint(len(string)), string]
    return b"".join(parts)


def unpack(data: bytes) -> Bitstream:
    reader = _Reader(data)
    version = reader.take(1)[0]
    if version != VERSION:
        raise BitstreamError(
            f"bitstream format {version}, this icmflow reads format {VERSION}: encode it again"
        )
    height, width = reader.varint(), reader.varint()
    shape = tuple(reader.varint() for _ in range(reader.varint()))
    index_check, pixel_check = reader.check(), reader.check()
    strings = tuple(reader.take(reader.varint()) for _ in range(reader.varint()))
    if reader.pos != len(data):
        raise BitstreamError(f"{len(data) - reader.pos} unexpected bytes after the last string")
    return Bitstream(height, width, shape, strings, index_check, pixel_check)


def strings_of_one_image(output: dict) -> tuple[bytes, ...]:
    """The byte strings of `model.compress()`'s output for a batch of one image."""
    strings: Sequence[Sequence[bytes]] = output["strings"]
    if any(len(per_latent) != 1 for per_latent in strings):
        raise ValueError("expected compress() output for a batch of exactly one image")
    return tuple(s[0] for s in strings)
