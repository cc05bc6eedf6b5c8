import csv
import json

import numpy as np
import pytest

from icmflow.coding.bitstream import Bitstream, pack, unpack
from icmflow.coding.codec import compress_image, decompress_image
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.coding.registry import create_model
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.parallel import dask_client
from tests.conftest import save_codec


def test_bitstream_round_trip_and_truncation():
    stream = Bitstream(300, 70000, (5, 1094), (b"abc" * 100, b"", b"\x00\xff"))
    data = pack(stream)
    assert unpack(data) == stream
    with pytest.raises(ValueError, match="truncated"):
        unpack(data[:-1])
    with pytest.raises(ValueError, match="unexpected bytes"):
        unpack(data + b"x")


def test_unknown_architecture_lists_the_registry():
    with pytest.raises(ValueError, match="bmshj2018-hyperprior"):
        create_model("no-such-codec")


def test_any_image_size_decodes_to_its_own_size(codec):
    rng = np.random.default_rng(0)
    for h, w in [(45, 70), (64, 64), (1, 130)]:
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        decoded = decompress_image(codec, compress_image(codec, rgb))
        assert decoded.shape == (h, w, 3) and decoded.dtype == np.uint8


def test_coded_dataset_holds_exactly_what_the_bitstreams_decode_to(
    codec, sample_prepared, tmp_path
):
    val = sample_prepared["val"]
    checkpoint = save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    tmp_path = tmp_path / "coded"
    summary = encode_dataset(checkpoint, val, tmp_path)
    coded = PreparedDataset.load(tmp_path / "annotations.json")
    assert coded.data["annotations"] == val.data["annotations"]
    with (tmp_path / "bpp.csv").open() as handle:
        rows = {int(r["image_id"]): r for r in csv.DictReader(handle)}
    for image in coded.images:
        stem = image["file_name"].removesuffix(".png")
        data = (tmp_path / "bitstreams" / f"{stem}.bin").read_bytes()
        np.testing.assert_array_equal(
            read_rgb(coded.image_path(image)), decompress_image(codec, data)
        )
        assert int(rows[image["id"]]["bytes"]) == len(data)
        assert float(rows[image["id"]]["bpp"]) == pytest.approx(
            8 * len(data) / (image["width"] * image["height"])
        )
    total_bits = 8 * sum(p.stat().st_size for p in (tmp_path / "bitstreams").iterdir())
    pixels = sum(im["width"] * im["height"] for im in val.images)
    assert summary["bpp"] == pytest.approx(total_bits / pixels)
    assert json.loads((tmp_path / "summary.json").read_text())["total_bits"] == total_bits


def test_encoding_on_a_dask_cluster_resumes_and_matches(codec, sample_prepared, tmp_path):
    val = sample_prepared["val"]
    checkpoint = save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    serial = tmp_path / "serial"
    encode_dataset(checkpoint, val, serial, images_per_task=2)
    first = val.images[0]["file_name"].removesuffix(".png")
    (serial / "images" / f"{first}.png").unlink()  # as if interrupted inside this image
    stamps = {p.name: p.stat().st_mtime_ns for p in (serial / "bitstreams").iterdir()}
    with dask_client(None, n_workers=2) as client:
        encode_dataset(checkpoint, val, serial, client=client, images_per_task=2)
        encode_dataset(checkpoint, val, tmp_path / "dask", client=client, images_per_task=2)
    redone = {
        p.name for p in (serial / "bitstreams").iterdir() if p.stat().st_mtime_ns != stamps[p.name]
    }
    assert redone == {f"{first}.bin"}
    for folder in ("images", "bitstreams"):
        ours = {p.name: p.read_bytes() for p in (serial / folder).iterdir()}
        theirs = {p.name: p.read_bytes() for p in (tmp_path / "dask" / folder).iterdir()}
        assert ours == theirs and len(ours) == len(val.images)
