"""What encode wrote, file by file, and the check every reader of a rate makes against it.

bpp counts the bytes of bitstream files, and nothing inside a bitstream ties it to its image: a
file damaged, truncated or swapped with another after encoding would still be counted, and often
still decode. So encode records, per image, the bitstream's name, size and SHA-256 and the
decoded PNG's SHA-256 (in the split's bpp table), and readers that report a rate or measure the
decoded images (`evaluate`, the layers of a scalable codec, the machine bitstreams of
`infer`) check every file against that record first: any difference stops them with an error
naming the file, never a number measured on other bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from icmflow.core.errors import BitstreamError

BITSTREAM, SHA256, DECODED_SHA256 = "bitstream", "sha256", "decoded_sha256"
"""The bpp table's columns of the record: bitstream file name, its digest, the PNG's digest."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Written:
    """One image's files as encode wrote them."""

    bitstream: str
    """The bitstream's path in the split's bitstream folder."""
    size: int
    sha256: str
    decoded_sha256: str

    @classmethod
    def of(cls, bitstream: str, data: bytes, png: bytes) -> Written:
        return cls(bitstream, len(data), sha256(data), sha256(png))

    def fields(self) -> dict[str, str | int]:
        """The bpp table's columns of this record."""
        return {BITSTREAM: self.bitstream, SHA256: self.sha256, DECODED_SHA256: self.decoded_sha256}


def check_file(path: Path, size: int | None, digest: str, fix: str) -> bytes:
    """The bytes of `path` if it is what encode recorded (`size`: also checked when given);
    else a `BitstreamError` naming the file, what differs, and the `fix`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BitstreamError(f"{path}: missing, though encode wrote it; {fix}") from None
    if size is not None and len(data) != size:
        problem = f"{len(data)} bytes, encode wrote {size} (truncated or replaced)"
    elif sha256(data) != digest:
        problem = "its SHA-256 differs from what encode recorded (damaged or swapped)"
    else:
        return data
    raise BitstreamError(f"{path}: {problem}; {fix}")


def require_record(
    table: Path, rows: list[dict[str, str]], columns: tuple[str, ...], fix: str
) -> None:
    """Refuse a table without the record's `columns` (written before files were recorded)."""
    if rows and not set(columns) <= set(rows[0]):
        raise BitstreamError(
            f"{table}: records no file digests (written by an older icmflow), so its files "
            f"cannot be checked; {fix}"
        )


def check_rows(
    rows: list[dict[str, str]], table: Path, bitstreams: Path, decoded: Path, fix: str
) -> dict[int, int]:
    """Check every bitstream and decoded PNG of a split's bpp table `rows` (bitstreams in the
    folder `bitstreams`, PNGs in `decoded`) against the table; the bytes of each image id."""
    require_record(table, rows, (BITSTREAM, SHA256, DECODED_SHA256), fix)
    sizes = {}
    for row in rows:
        size = int(row["bytes"])
        check_file(bitstreams / row[BITSTREAM], size, row[SHA256], fix)
        check_file(decoded / row["file_name"], None, row[DECODED_SHA256], fix)
        sizes[int(row["image_id"])] = size
    return sizes
