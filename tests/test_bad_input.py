"""Every kind of bad input, in every layout it can occur in: a clear error naming the file and the
entry (`on_error: raise`), or a logged skip that leaves out everything the bad entry would make
wrong (`on_error: skip`); never a silently wrong mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from icmflow.codecs.checkpoint import load_codec
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import InputError
from icmflow.datasets.images import SWAPS_SIDES, read_header, read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.masks.store import MaskStore
from icmflow.training.data import TrainingCrops
from tests.helpers.builders import build, save_codec
from tests.helpers.codecs import learned_spec
from tests.helpers.layouts import (
    FORMATS,
    SIZES,
    Tiny,
    assert_refused,
    layouts,
    name,
    write_tiny,
)


@pytest.fixture(params=FORMATS)
def tiny(request, tmp_path) -> Tiny:
    return write_tiny(request.param, tmp_path / request.param)


def box_union(tiny: Tiny, index: int) -> np.ndarray:
    w, h = SIZES[index]
    mask = np.zeros((h, w), dtype=bool)
    for ann in tiny.coco["annotations"]:
        if ann["image_id"] == index + 1:
            x, y, bw, bh = (int(v) for v in ann["bbox"])
            mask[y : y + bh, x : x + bw] = True
    return mask


def test_the_tiny_layouts_are_read_exactly(tiny, tmp_path):
    prepared, problems = tiny.prepare()
    assert not problems.skipped
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    for index, image in enumerate(prepared["images"]):
        assert image["file_name"] == name(tiny, index)
        np.testing.assert_array_equal(store.mask(image["id"]), box_union(tiny, index))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_corrupt_or_truncated_image_file(tiny, damage):
    path = tiny.image(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x89PNG garbage")
    entry = "images[1] (id=2, file_name='im2.png')" if tiny.format == "coco" else ""
    origin = tiny.annotations if tiny.format == "coco" else path
    assert_refused(tiny, origin, entry, f"image file {path} cannot be decoded", {1})


def test_truncated_cityscapes_label_image(tmp_path):
    tiny = write_tiny("cityscapes", tmp_path)
    label = tiny.label(2)
    label.write_bytes(label.read_bytes()[:60])
    assert_refused(tiny, label, "", f"image file {label} cannot be decoded", {2})


def test_image_listed_but_missing(tiny):
    tiny.image(0).unlink()
    if tiny.format == "coco":
        entry, file = "images[0] (id=1, file_name='im1.png')", tiny.annotations
        text = f"image file not found: {tiny.image(0)}"
    elif tiny.format == "cityscapes":
        entry, file, text = "", tiny.label(0), f"no image for it: {tiny.image(0)} is missing"
    else:
        entry, file, text = "", tiny.label(0), "no image for this annotation file"
    assert_refused(tiny, file, entry, text, {0})


@layouts("visdrone", "cityscapes")
def test_image_without_its_annotation_file(tiny):
    tiny.label(2).unlink()
    missing = "are missing" if tiny.format == "cityscapes" else "is missing"
    assert_refused(tiny, tiny.image(2), "", f"{tiny.label(2)} {missing}", {2})


def test_truncated_or_invalid_json(tmp_path):
    tiny = write_tiny("coco", tmp_path)
    text = tiny.annotations.read_text()
    tiny.annotations.write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=r"line 1 column \d+: invalid JSON .* truncated"):
        tiny.prepare("skip")  # nothing in it can be trusted: never skipped
    tiny.annotations.write_text('{"images": []}')
    with pytest.raises(InputError, match="not a COCO instances file"):
        tiny.prepare("skip")


@layouts("visdrone", "yolo")
@pytest.mark.parametrize("damage", ["truncated", "not numbers", "binary"])
def test_truncated_or_invalid_annotation_txt(tiny, damage):
    label = tiny.label(1)
    lines = label.read_text().splitlines()
    if damage == "truncated":
        label.write_text(lines[0] + "\n" + lines[1][:5])
        entry, text = "line 2", "a short"
    elif damage == "not numbers":
        separator = "," if tiny.format == "visdrone" else " "
        label.write_text(lines[0] + "\n" + lines[1].rsplit(separator, 1)[0] + separator + "x\n")
        entry, text = "line 2", "must be "
    else:
        label.write_bytes(b"\xff\xfe\x00garbage")
        entry, text = "byte 0", "not UTF-8 text"
    assert_refused(tiny, label, entry, text, {1})


@layouts("coco", "visdrone", "yolo")
def test_box_outside_the_image_is_rejected(tiny):
    """Beyond EDGE_TOLERANCE (1 px) a box is rejected; within it, kept and clipped by the mask."""
    w, h = SIZES[0]
    if tiny.format == "coco":
        tiny.edit_json(lambda coco: coco["annotations"][1]["bbox"].__setitem__(0, w - 5.0))
        entry, file = "annotations[1] (id=2, image_id=1)", tiny.annotations
    elif tiny.format == "visdrone":
        lines = tiny.label(0).read_text().splitlines()
        tiny.label(0).write_text(lines[0] + "\n" + f"{w - 5},10,12,9,1,4,0,0\n")
        entry, file = "line 2", tiny.label(0)
    else:
        lines = tiny.label(0).read_text().splitlines()
        tiny.label(0).write_text(lines[0] + "\n0 1.1 0.5 0.25 0.25\n")
        entry, file = "line 2", tiny.label(0)
    assert_refused(tiny, file, entry, f"outside the {w}x{h} image", {0})


def test_polygon_outside_the_image_is_rejected_and_within_tolerance_clipped(tmp_path):
    tiny = write_tiny("yolo", tmp_path)
    w, h = SIZES[2]
    tiny.label(2).write_text("0 0.5 0.5 1.01 0.5 1.01 1.01 0.5 1.01\n0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    prepared, _ = tiny.prepare()  # 1.01 × 56 = 56.56: within a pixel of the edge
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    assert store.mask(3)[h // 2 :, w // 2 :].all()
    tiny.label(2).write_text("0 0.5 0.5 1.2 0.5 1.2 1.2 0.5 1.2\n")
    assert_refused(tiny, tiny.label(2), "line 1", f"outside the {w}x{h} image", {2})


@layouts("coco", "visdrone", "yolo")
def test_zero_area_instance(tiny):
    if tiny.format == "coco":

        def flatten(coco):
            coco["annotations"][3]["segmentation"] = [[5, 5, 10, 5, 15, 5]]  # a line
            del coco["annotations"][3]["area"]

        tiny.edit_json(flatten)
        entry, file = "annotations[3] (id=4, image_id=2)", tiny.annotations
    elif tiny.format == "visdrone":
        tiny.label(1).write_text("2,3,10,8,1,4,0,0\n20,10,0,9,1,4,0,0\n")
        entry, file = "line 2", tiny.label(1)
    else:
        tiny.label(1).write_text("0 0.3 0.3 0.2 0.2\n0 0.6 0.6 0.0 0.2\n")
        entry, file = "line 2", tiny.label(1)
    assert_refused(tiny, file, entry, "covers no pixel (zero area)", {1})


def test_image_with_no_objects(tiny, tmp_path):
    if tiny.format == "coco":
        tiny.edit_json(lambda coco: coco.update(annotations=coco["annotations"][2:]))
    elif tiny.format == "cityscapes":  # a frame of road only
        Image.fromarray(np.full((32, 48), 7, dtype=np.uint16)).save(tiny.label(0))
        Image.fromarray(np.full((32, 48), 7, dtype=np.uint8)).save(
            tiny.label(0).with_name(tiny.label(0).name.replace("instanceIds", "labelIds"))
        )
    elif tiny.format == "yolo":
        tiny.label(0).unlink()  # ultralytics: no label file, no objects
    else:
        tiny.label(0).write_text("")
    prepared, problems = tiny.prepare()
    assert not problems.skipped
    assert [im["file_name"] for im in prepared["images"]] == [name(tiny, i) for i in range(3)]
    assert {a["image_id"] for a in prepared["annotations"]} == {2, 3}
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    assert not store.mask(1).any() and store.mask(1).shape == (32, 48)
    assert store.mask(2).any()


MODES = {
    "grayscale": lambda rgb: Image.fromarray(rgb[..., 0]),
    "RGBA": lambda rgb: Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
    "palette": lambda rgb: Image.fromarray(rgb).quantize(colors=16),
    "grayscale 16-bit": lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 256 + 3),
}


def expected_rgb8(path, mode: str) -> np.ndarray:
    """The 8-bit RGB the pipeline must see, computed without `to_rgb8`."""
    if mode == "RGB 16-bit":
        return (cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1] >> 8).astype(np.uint8)
    with Image.open(path) as image:
        if mode == "grayscale 16-bit":
            gray = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode == "palette":
            palette = np.array(image.getpalette()[:48], dtype=np.uint8).reshape(-1, 3)
            return palette[np.asarray(image)]
        array = np.asarray(image)
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[..., :3].copy()


@pytest.mark.parametrize("mode", [*MODES, "RGB 16-bit"])
def test_pixel_formats_become_the_same_rgb8_for_masks_training_and_encoding(mode, tmp_path, codec):
    tiny = write_tiny("coco", tmp_path / "coco")
    path = tiny.image(0)
    rgb = tiny.pixels[0]
    if mode == "RGB 16-bit":
        cv2.imwrite(str(path), rgb[..., ::-1].astype(np.uint16) * 256 + 3)
    else:
        MODES[mode](rgb).save(path)
    expected = expected_rgb8(path, mode)
    assert expected.dtype == np.uint8 and expected.shape == (32, 48, 3)
    np.testing.assert_array_equal(read_rgb(path), expected)
    prepared, _ = tiny.prepare()  # decodes every image: sizes checked on the same pixels
    write_prepared(tmp_path / "val.json", prepared, image_root=tiny.images, final_dir=tmp_path)
    dataset = PreparedDataset.load(tmp_path / "val.json")
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    sample = TrainingCrops(dataset, {"object": store.path}, patch_size=32)[0]  # 32: the height
    x, m = sample["x"], sample["object"]
    rows = (x * 255).round().byte().permute(1, 2, 0).numpy()
    assert any(np.array_equal(rows, expected[:, s : s + 32]) for s in range(48 - 32 + 1))
    assert m.shape == (1, 32, 32)
    checkpoint = save_codec(codec, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    encode_dataset(learned_spec(checkpoint), {"val": dataset}, tmp_path / "coded")
    stream = (tmp_path / "coded" / "bitstreams" / "val" / "im1.bin").read_bytes()
    assert stream == LearnedCodec(load_codec(checkpoint)).encode(expected).data  # fed `expected`


def exif_jpeg(path, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format="JPEG", quality=95, exif=exif)


def test_exif_rotated_jpeg_is_read_as_stored(tmp_path):
    """Annotations refer to the stored pixels; the EXIF orientation tag is never applied."""
    tiny = write_tiny("coco", tmp_path)
    path = tiny.images / "im1.jpg"
    exif_jpeg(path, tiny.pixels[0], orientation=6)
    tiny.image(0).unlink()
    header = read_header(path)
    assert (header.width, header.height, header.orientation) == (48, 32, 6) and 6 in SWAPS_SIDES
    assert read_rgb(path).shape == (32, 48, 3)  # stored, not rotated to 32 wide
    tiny.edit_json(lambda coco: coco["images"][0].update(file_name="im1.jpg"))
    prepared, _ = tiny.prepare()
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    np.testing.assert_array_equal(store.mask(1), box_union(tiny, 0))
    tiny.edit_json(lambda coco: coco["images"][0].update(width=32, height=48))  # the rotated view
    with pytest.raises(InputError) as err:
        tiny.prepare()
    assert err.value.entry == "images[0] (id=1, file_name='im1.jpg')"
    assert "is 48x32 but the JSON says 32x48; its EXIF orientation tag is 6" in err.value.reason
    assert "annotations must refer to the stored pixels" in err.value.reason


@layouts("visdrone", "yolo")
def test_exif_rotated_jpeg_without_sizes_in_the_labels_is_refused(tiny):
    path = tiny.image(0).with_suffix(".jpg")
    exif_jpeg(path, tiny.pixels[0], orientation=8)
    tiny.image(0).unlink()
    assert_refused(tiny, path, "", "this annotation format records no image size", {0})
    exif_jpeg(path, tiny.pixels[0], orientation=1)  # the tag says: as stored
    prepared, _ = tiny.prepare()
    assert len(prepared["images"]) == 3


def test_duplicate_image_ids(tmp_path):
    tiny = write_tiny("coco", tmp_path)
    tiny.edit_json(lambda coco: coco["images"][2].update(id=1))
    assert_refused(
        tiny,
        tiny.annotations,
        "images[2] (id=1, file_name='im3.png')",
        "duplicate image id 1 (also",
        {0, 2},  # whose annotations are whose? neither image can keep them
    )


@layouts("visdrone", "yolo")
def test_two_images_for_one_label_file(tiny):
    twin = tiny.image(2).with_suffix(".jpg")
    Image.fromarray(tiny.pixels[2]).save(twin)
    with pytest.raises(InputError, match=r"2 images \(im3.jpg, im3.png\) share the label file"):
        tiny.prepare()
    prepared, problems = tiny.prepare("skip")
    assert {s.file for s in problems.skipped} == {str(twin), str(tiny.image(2))}
    assert [im["file_name"] for im in prepared["images"]] == ["im1.png", "im2.png"]


def test_image_smaller_than_the_training_crop(tmp_path, codec):
    """Mirror-padded, image and mask alike; coded at its own size."""
    tiny = write_tiny("visdrone", tmp_path)
    rgb = np.zeros((12, 20, 3), dtype=np.uint8)
    rgb[3:9, 5:15, 0] = 255  # red exactly on the object
    Image.fromarray(rgb).save(tiny.image(0))
    tiny.label(0).write_text("5,3,10,6,1,4,0,0\n")
    prepared, _ = tiny.prepare()
    assert prepared["images"][0]["width"] == 20
    write_prepared(tmp_path / "val.json", prepared, image_root=tiny.images, final_dir=tmp_path)
    store = MaskStore(build(prepared, tmp_path / "masks.zarr"))
    crops = TrainingCrops(
        PreparedDataset.load(tmp_path / "val.json"), {"object": store.path}, patch_size=64
    )
    for _ in range(3):
        x, m = crops[0]["x"], crops[0]["object"]
        assert x.shape == (3, 64, 64) and m.shape == (1, 64, 64)
        torch.testing.assert_close(x[0], m[0])
    assert LearnedCodec(codec).encode(rgb).decoded.shape == rgb.shape


def test_unknown_category_ids(tiny):
    file, entry = tiny.label(1), "line 2"
    if tiny.format == "coco":
        tiny.edit_json(lambda coco: coco["annotations"][3].update(category_id=77))
        file, entry, unknown = tiny.annotations, "annotations[3] (id=4, image_id=2)", 77
    elif tiny.format == "visdrone":
        tiny.label(1).write_text("2,3,10,8,1,4,0,0\n20,10,12,9,1,12,0,0\n")
        unknown = 12
    elif tiny.format == "yolo":
        tiny.label(1).write_text("0 0.3 0.3 0.2 0.2\n3 0.6 0.6 0.2 0.2\n")
        unknown = 3
    else:  # an instance id of `road` (7), a class without instances
        ids = np.asarray(Image.open(file)).astype(np.uint16)
        ids[0, 0] = 7001
        Image.fromarray(ids).save(file)
        entry, unknown = "instance id 7001", 7
    assert_refused(tiny, file, entry, f"unknown category_id {unknown}", {1})


def test_unknown_cityscapes_pixel_values(tmp_path):
    tiny = write_tiny("cityscapes", tmp_path)
    ids = np.asarray(Image.open(tiny.label(0))).astype(np.uint16)
    ids[0, :3] = 50
    Image.fromarray(ids).save(tiny.label(0))
    assert_refused(tiny, tiny.label(0), "", "pixel value(s) [50] are neither label ids", {0})


def test_cityscapes_label_files_that_disagree(tmp_path):
    tiny = write_tiny("cityscapes", tmp_path)
    labels = tiny.label(0).with_name(tiny.label(0).name.replace("instanceIds", "labelIds"))
    values = np.asarray(Image.open(labels)).copy()
    values[5, 5] = 24  # a car pixel (26) in instanceIds
    Image.fromarray(values).save(labels)
    assert_refused(tiny, tiny.label(0), "", f"1 pixel(s) disagree with {labels}", {0})
