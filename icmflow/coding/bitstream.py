"""The bitstream file: everything needed to decode one image, and nothing else.

Layout (all integers unsigned LEB128 varints): height, width, the number of latent-shape
dimensions and each dimension, the number of strings, then each string's length and bytes.
The header costs about a dozen bytes; bpp counts the whole file, header included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Bitstream:
    height: int
    width: int
    shape: tuple[int, ...]
    strings: tuple[bytes, ...]


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

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("bitstream ends inside a header field")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("bitstream is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def pack(stream: Bitstream) -> bytes:
    parts = [_varint(stream.height), _varint(stream.width), _varint(len(stream.shape))]
    parts += [_varint(d) for d in stream.shape]
    parts.append(_varint(len(stream.strings)))
    for string in stream.strings:
        parts += [_varint(len(string)), string]
    return b"".join(parts)


def unpack(data: bytes) -> Bitstream:
    reader = _Reader(data)
    height, width = reader.varint(), reader.varint()
    shape = tuple(reader.varint() for _ in range(reader.varint()))
    strings = tuple(reader.take(reader.varint()) for _ in range(reader.varint()))
    if reader.pos != len(data):
        raise ValueError(f"{len(data) - reader.pos} unexpected bytes after the last string")
    return Bitstream(height, width, shape, strings)


def from_compress_output(height: int, width: int, output: dict) -> Bitstream:
    """Wrap `model.compress()`'s output for a batch of one image."""
    strings: Sequence[Sequence[bytes]] = output["strings"]
    if any(len(per_latent) != 1 for per_latent in strings):
        raise ValueError("expected compress() output for a batch of exactly one image")
    shape = tuple(int(d) for d in output["shape"])
    return Bitstream(height, width, shape, tuple(s[0] for s in strings))
