import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from icmflow.codecs.architectures import create_model
from icmflow.coding.bitstream import Bitstream, pack, unpack
from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import (
    add_cityscapes_layout,
    coded_split,
    encode_dataset,
    read_bytes_per_image,
)
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import BitstreamError, ProblemLog, UnknownNameError
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.runtime.cluster import dask_client
from icmflow.vision.tasks.offline import import_ultralytics
from tests.helpers.builders import save_codec
from tests.helpers.codecs import learned_spec, textured_image, tiny_codec
from tests.helpers.project import REPO


def test_bitstream_round_trip_and_truncation():
    stream = Bitstream(300, 70000, (5, 1094), (b"abc" * 100, b"", b"\x00\xff"), 2**32 - 1, 7)
    data = pack(stream)
    assert unpack(data) == stream
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(data[:-1])
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        unpack(data + b"x")
    with pytest.raises(BitstreamError, match="format 1"):
        unpack(b"\x01" + data[1:])


def test_unknown_architecture_lists_the_registry():
    with pytest.raises(UnknownNameError, match="bmshj2018-hyperprior"):
        create_model("no-such-codec")


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_any_image_size_decodes_to_its_own_size(arch):
    codec = LearnedCodec(tiny_codec(arch))
    rng = np.random.default_rng(0)
    for h, w in [(45, 70), (64, 64), (1, 130)]:
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        coded = codec.encode(rgb)
        assert coded.decoded.shape == (h, w, 3) and coded.decoded.dtype == np.uint8
        np.testing.assert_array_equal(codec.decode(coded.data), coded.decoded)


def test_a_wrong_checkpoint_or_a_damaged_bitstream_is_an_error_not_an_image():
    rgb = textured_image(128, 192)
    codec = LearnedCodec(tiny_codec(seed=0, gain=40))
    coded = codec.encode(rgb)
    other = LearnedCodec(tiny_codec(seed=1, gain=40), name="other.pth.tar")
    with pytest.raises(BitstreamError, match=r"im\.bin: the entropy decoder's scale indexes"):
        other.decode(coded.data, source="im.bin")
    stream = unpack(coded.data)
    y, z = stream.strings
    half = len(y) // 2
    for strings, error in [
        ((y, bytes([z[0] ^ 0xFF]) + z[1:]), "scale indexes differ"),  # other scales
        ((y[:half] + bytes(v ^ 0xA5 for v in y[half:]), z), "decoded pixels differ"),
    ]:
        with pytest.raises(BitstreamError, match=f"bad.bin: .*{error}"):
            codec.decode(pack(replace(stream, strings=strings)), source="bad.bin")
    loose = codec.decode(pack(replace(stream, pixel_check=0)), strict=False)
    np.testing.assert_array_equal(loose, coded.decoded)


@pytest.mark.parametrize("family", list(CLASSICAL))
def test_classical_codecs_decode_what_they_wrote(family):
    rgb = textured_image(48, 80)
    codec = CLASSICAL[family](family=family, quality=50).build()
    coded = codec.encode(rgb)
    assert codec.encode(rgb).data == coded.data  # the same bytes every time
    np.testing.assert_array_equal(codec.decode(coded.data), coded.decoded)
    assert coded.decoded.shape == rgb.shape
    assert np.abs(coded.decoded.astype(int) - rgb).mean() < 12
    low = CLASSICAL[family](family=family, quality=10).build().encode(rgb)
    assert len(low.data) < len(coded.data)
    with pytest.raises(BitstreamError, match=f"x: not a decodable {family} file"):
        codec.decode(coded.data[: len(coded.data) // 3], source="x")


@pytest.mark.parametrize("family", ["avif", "heif"])
def test_truncated_files_stay_bitstream_errors_once_ultralytics_is_imported(family):
    # ultralytics' PIL.Image.open would turn Pillow's "cannot identify" into a pi-heif install
    import_ultralytics()
    codec = CLASSICAL[family](family=family, quality=50).build()
    data = codec.encode(textured_image(48, 80)).data
    with pytest.raises(BitstreamError, match=f"x: not a decodable {family} file"):
        codec.decode(data[: len(data) // 3], source="x")


def test_coded_dataset_holds_exactly_what_the_bitstreams_decode_to(
    codec, sample_prepared, tmp_path
):
    val = sample_prepared["val"]
    checkpoint = save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    tmp_path = tmp_path / "coded"
    summary = encode_dataset(learned_spec(checkpoint), {"val": val}, tmp_path)["val"]
    coded = PreparedDataset.load(coded_split(tmp_path, "val"))
    assert coded.data["annotations"] == val.data["annotations"]
    with (tmp_path / "bpp" / "val.csv").open() as handle:
        rows = {int(r["image_id"]): r for r in csv.DictReader(handle)}
    for image in coded.images:
        stem = image["file_name"].removesuffix(".png")
        data = (tmp_path / "bitstreams" / "val" / f"{stem}.bin").read_bytes()
        np.testing.assert_array_equal(
            read_rgb(coded.image_path(image)), LearnedCodec(codec).decode(data)
        )
        assert int(rows[image["id"]]["bytes"]) == len(data)
        assert float(rows[image["id"]]["bpp"]) == pytest.approx(
            8 * len(data) / (image["width"] * image["height"])
        )
    total_bits = 8 * sum(p.stat().st_size for p in (tmp_path / "bitstreams/val").iterdir())
    pixels = sum(im["width"] * im["height"] for im in val.images)
    assert summary["bpp"] == pytest.approx(total_bits / pixels)
    assert json.loads((tmp_path / "summary.json").read_text())["val"]["total_bits"] == total_bits


def test_swapped_learned_bitstreams_decode_but_their_rate_is_refused(
    codec, sample_prepared, tmp_path
):
    """Nothing in a bitstream ties it to its image: two swapped files decode without an error,
    so the digests encode recorded are what catches them, in every reader of the rate."""
    checkpoint = save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    coded = tmp_path / "coded"
    encode_dataset(learned_spec(checkpoint), {"val": sample_prepared["val"]}, coded)
    sizes = read_bytes_per_image(coded, "val")
    first, second = sorted((coded / "bitstreams" / "val").iterdir())[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    LearnedCodec(codec).decode(first.read_bytes())  # decodes: to the other image
    with pytest.raises(BitstreamError) as err:
        read_bytes_per_image(coded, "val")
    assert str(err.value).startswith(f"{first}: ") and "rerun `icmflow encode coded`" in str(
        err.value
    )
    first.write_bytes(a)
    second.write_bytes(b)
    assert read_bytes_per_image(coded, "val") == sizes
    table = coded / "bpp" / "val.csv"
    rows = list(csv.DictReader(table.open()))
    with table.open("w", newline="") as handle:  # as an icmflow without the record wrote it
        writer = csv.DictWriter(handle, ["image_id", "file_name", "bytes", "pixels", "bpp"])
        writer.writeheader()
        writer.writerows({k: row[k] for k in writer.fieldnames} for row in rows)
    with pytest.raises(BitstreamError, match="records no file digests"):
        read_bytes_per_image(coded, "val")


def test_classical_coded_dataset_counts_the_files_it_wrote(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    jpeg = CLASSICAL["jpeg"](family="jpeg", quality=30)
    summary = encode_dataset(jpeg, {"val": val}, tmp_path)["val"]
    files = sorted((tmp_path / "bitstreams" / "val").iterdir())
    assert [f.suffix for f in files] == [".jpg"] * len(val.images)
    assert summary["total_bits"] == 8 * sum(f.stat().st_size for f in files)
    for image in val.images:
        stem = image["file_name"].removesuffix(".png")
        decoded = jpeg.decode((tmp_path / "bitstreams" / "val" / f"{stem}.jpg").read_bytes())
        np.testing.assert_array_equal(read_rgb(tmp_path / "images/val" / f"{stem}.png"), decoded)


def test_a_coded_dataset_is_also_an_ultralytics_dataset(sample_prepared, tmp_path):
    """data.yaml, images/ and labels/ read back through icmflow's own YOLO reader give the
    source's objects (crowd regions aside: YOLO has none) on the coded pixels."""
    val = sample_prepared["val"]
    encode_dataset(CLASSICAL["jpeg"](family="jpeg", quality=30), {"val": val}, tmp_path)
    config = yaml.safe_load((tmp_path / "data.yaml").read_text())
    names = {0: "disc", 1: "star", 2: "box"}
    assert config == {"train": "images/val", "val": "images/val", "names": names}
    raw = FORMATS["yolo"].read(
        tmp_path / "labels" / "val",
        tmp_path / "images" / "val",
        ProblemLog("raise"),
        dataset_yaml=tmp_path / "data.yaml",
    )
    read = normalise(raw, tmp_path / "images" / "val", ProblemLog("raise"), workers=1)

    def single_polygon(annotation: dict) -> bool:
        return isinstance(annotation["segmentation"], list) and len(annotation["segmentation"]) == 1

    def objects(dataset: dict, category_of) -> list:
        """(image, class, box), the box a polygon's extent where the image's file has polygons
        (every object a single polygon), else the annotated box."""
        name_of = {i["id"]: i["file_name"].removesuffix(".png") for i in dataset["images"]}
        kept = [a for a in dataset["annotations"] if not a["iscrowd"]]
        polygons = {
            image_id: all(single_polygon(a) for a in kept if a["image_id"] == image_id)
            for image_id in name_of
        }
        found = []
        for a in kept:
            box = a["bbox"]
            if polygons[a["image_id"]]:
                xs, ys = a["segmentation"][0][::2], a["segmentation"][0][1::2]
                box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            found.append((name_of[a["image_id"]], category_of(a["category_id"]), box))
        return sorted(found)

    ours = objects(read, lambda c: c)
    theirs = objects(val.data, lambda c: c - 1)  # ids 1, 2, 3 -> classes 0, 1, 2
    assert [(n, c) for n, c, _ in ours] == [(n, c) for n, c, _ in theirs] and ours
    for (_, _, box), (_, _, expected) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(box, expected, atol=2e-3)


def test_a_coded_cityscapes_dataset_is_also_a_cityscapes_dataset(sample_layouts, tmp_path):
    """Read back through icmflow's Cityscapes reader: the source's objects on the coded pixels."""
    source = sample_layouts / "cityscapes"

    def read(root: Path) -> dict:
        images = root / "leftImg8bit" / "val"
        raw = FORMATS["cityscapes"].read(
            root / "gtFine" / "val", images, ProblemLog("raise"), ignored_regions="crowd"
        )
        return normalise(raw, images, ProblemLog("raise"), workers=1)

    original = read(source)
    write_prepared(
        tmp_path / "val.json",
        original,
        image_root=source / "leftImg8bit" / "val",
        final_dir=tmp_path,
    )
    coded = tmp_path / "coded"
    encode_dataset(
        CLASSICAL["jpeg"](family="jpeg", quality=30),
        {"val": PreparedDataset.load(tmp_path / "val.json")},
        coded,
    )
    add_cityscapes_layout(coded, "val", source / "gtFine" / "val")
    again = read(coded / "cityscapes")
    assert [i["file_name"] for i in again["images"]] == [i["file_name"] for i in original["images"]]
    assert again["annotations"] == original["annotations"] and again["annotations"]
    for image in again["images"]:
        np.testing.assert_array_equal(
            read_rgb(coded / "cityscapes" / "leftImg8bit" / "val" / image["file_name"]),
            read_rgb(coded / "images" / "val" / image["file_name"]),
        )


def test_encoding_on_a_dask_cluster_resumes_and_matches(codec, sample_prepared, tmp_path):
    val = sample_prepared["val"]
    spec = learned_spec(save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16}))
    serial = tmp_path / "serial"
    encode_dataset(spec, {"val": val}, serial, images_per_task=2)
    first = val.images[0]["file_name"].removesuffix(".png")
    (serial / "images" / "val" / f"{first}.png").unlink()  # as if interrupted inside this image
    stamps = {p.name: p.stat().st_mtime_ns for p in (serial / "bitstreams/val").iterdir()}
    with dask_client(None, n_workers=2) as client:
        encode_dataset(spec, {"val": val}, serial, client=client, images_per_task=2)
        encode_dataset(spec, {"val": val}, tmp_path / "dask", client=client, images_per_task=2)
    redone = {
        p.name
        for p in (serial / "bitstreams/val").iterdir()
        if p.stat().st_mtime_ns != stamps[p.name]
    }
    assert redone == {f"{first}.bin"}
    for folder in ("images/val", "bitstreams/val"):
        ours = {p.name: p.read_bytes() for p in (serial / folder).iterdir()}
        theirs = {p.name: p.read_bytes() for p in (tmp_path / "dask" / folder).iterdir()}
        assert ours == theirs and len(ours) == len(val.images)


DECODE_WITH_THREADS = """
import sys, torch
from pathlib import Path
from icmflow.codecs.checkpoint import load_codec
from icmflow.coding.coded_dataset import DECODED_PNG_LEVEL
from icmflow.coding.learned import LearnedCodec
from icmflow.datasets.images import write_png
torch.set_num_threads(int(sys.argv[1]))
codec = LearnedCodec(load_codec(Path(sys.argv[2])))
for stream in sorted(Path(sys.argv[3]).iterdir()):
    decoded = codec.decode(stream.read_bytes())
    write_png(Path(sys.argv[4]) / f"{stream.stem}.png", decoded, compress_level=DECODED_PNG_LEVEL)
"""


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_decoding_with_another_thread_count_gives_the_stored_pngs_byte_for_byte(arch, tmp_path):
    """The coded dataset is written by this process (its torch thread count, e.g. 2 on CI);
    another process decodes the bitstreams with 1 and with 3 threads."""
    val_images = {}
    for k, (h, w) in enumerate([(300, 410), (257, 383)]):
        val_images[k] = textured_image(h, w, seed=k)
    from icmflow.datasets.images import write_png

    images = []
    for k, rgb in val_images.items():
        write_png(tmp_path / "src" / f"{k}.png", rgb)
        images.append(
            {"id": k + 1, "file_name": f"{k}.png", "height": rgb.shape[0], "width": rgb.shape[1]}
        )
    data = {"images": images, "annotations": [], "categories": [], "icmflow": {"image_root": "src"}}
    dataset = PreparedDataset(tmp_path / "d.json", data)
    model = tiny_codec(arch, gain=40, N=32, M=48)
    checkpoint = save_codec(model, tmp_path / "c.pth.tar", {"N": 32, "M": 48}, arch=arch)
    encode_dataset(learned_spec(checkpoint), {"val": dataset}, tmp_path / "coded")
    for threads in (1, 3):
        out = tmp_path / f"decoded-{threads}"
        out.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-c",
                DECODE_WITH_THREADS,
                str(threads),
                str(checkpoint),
                str(tmp_path / "coded" / "bitstreams" / "val"),
                str(out),
            ],
            check=True,
            cwd=REPO,
        )
        for k in val_images:
            stored = (tmp_path / "coded" / "images" / "val" / f"{k}.png").read_bytes()
            assert (out / f"{k}.png").read_bytes() == stored, f"{threads} threads, image {k}"
