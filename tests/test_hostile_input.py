"""Hostile and quirky inputs (issue 21): names that leave their folder, RLEs that would hang
pycocotools, images that ultralytics would rotate, names that collide, categories, boxes and areas
that disagree, empty splits. Each is a clear error naming the file and the entry, or a logged
skip: never a hang, a silently wrong output, or a file written outside the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.coding.machine import write_machine_split
from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import prepare_coco
from icmflow.datasets.images import read_header, read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.pipeline.cli import app
from icmflow.pipeline.params import ParamsError, load_params
from icmflow.pipeline.paths import Paths
from icmflow.stages import prepare
from icmflow.tasks.predictions import label_png_path
from icmflow.vision.tasks.base import TrainingData
from icmflow.vision.tasks.ultralytics_backend import write_yolo_layout
from tests.helpers.layouts import SIZES, Tiny, assert_refused, tiny_params, write_tiny
from tests.helpers.project import REPO, real_sample, store_files

JPEG = CLASSICAL["jpeg"](family="jpeg", quality=50)
FIRST_IMAGE = "images[0] (id=1, file_name='im1.png')"
FIRST_ANNOTATION = "annotations[0] (id=1, image_id=1)"


def tiny_coco(tmp_path) -> Tiny:
    return write_tiny("coco", tmp_path / "coco")


def prepared(tiny: Tiny, out) -> PreparedDataset:
    data, _ = tiny.prepare()
    write_prepared(out / "val.json", data, image_root=tiny.images, final_dir=out)
    return PreparedDataset.load(out / "val.json")


def exif_jpeg(path, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format="JPEG", quality=95, exif=exif)


def set_image(tiny: Tiny, index: int, **fields) -> None:
    tiny.edit_json(lambda coco: coco["images"][index].update(fields))


def set_annotation(tiny: Tiny, index: int, **fields) -> None:
    tiny.edit_json(lambda coco: coco["annotations"][index].update(fields))


# --- names that leave their folder -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "parent", "parent inside"])
def test_a_file_name_that_leaves_the_image_folder_is_refused(kind, tmp_path):
    tiny = tiny_coco(tmp_path)
    outside = tmp_path / "outside.png"  # a real image: only the name gives it away
    shutil.copy(tiny.image(0), outside)
    file_name = {
        "absolute": str(outside),
        "parent": "../../outside.png",
        "parent inside": "sub/../../../outside.png",
    }[kind]
    set_image(tiny, 0, file_name=file_name)
    text = "is absolute" if kind == "absolute" else "climbs out of the image folder with '..'"
    entry = f"images[0] (id=1, file_name={file_name!r})"
    assert_refused(tiny, tiny.annotations, entry, text, {0})


def test_the_cli_says_it_in_one_line_and_exits_1(tmp_path, monkeypatch):
    tiny = tiny_coco(tmp_path)
    set_image(tiny, 0, file_name=str(tiny.image(0)))
    raw = tiny_params(tiny).model_dump(mode="json", exclude_none=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path / "project")
    result = CliRunner().invoke(app, ["prepare", "tiny"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    entry = f"images[0] (id=1, file_name={str(tiny.image(0))!r})"
    assert line.startswith(f"icmflow prepare: {tiny.annotations}: {entry}: file_name ")


def test_a_coded_dataset_is_never_written_outside_its_folder(tmp_path):
    """Defence in depth: a prepared dataset naming an image by its absolute path (as prepare
    never writes) is refused by encode, which would otherwise overwrite the source PNG with its
    decoded copy."""
    tiny = tiny_coco(tmp_path)
    dataset = prepared(tiny, tmp_path / "prepared")
    dataset.images[1]["file_name"] = str(tiny.image(1))
    before = store_files(tmp_path)
    with pytest.raises(InputError, match="is absolute") as err:
        encode_dataset(JPEG, {"val": dataset}, tmp_path / "coded")
    assert err.value.file == str(dataset.path)
    assert err.value.entry == f"file_name={str(tiny.image(1))!r}"
    after = {k: v for k, v in store_files(tmp_path).items() if not k.startswith("coded/")}
    assert after == before


def test_machine_bitstreams_and_label_pngs_are_never_written_outside_their_folder(tmp_path):
    """The other outputs named after images refuse such names too."""
    tiny = tiny_coco(tmp_path)
    dataset = prepared(tiny, tmp_path / "prepared")
    dataset.images[0]["file_name"] = "../../../im1.png"
    coder = SimpleNamespace(encode=lambda rgb: SimpleNamespace(data=b"x", keep=np.ones(2)))
    with pytest.raises(InputError, match="climbs out of the image folder") as err:
        write_machine_split(coder, dataset, tmp_path / "coded", "val")
    assert err.value.file == str(dataset.path)
    with pytest.raises(InputError, match="is absolute"):
        label_png_path(tmp_path / "labels", str(tiny.image(1)))
    assert label_png_path(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.png"
    assert not (tmp_path / "coded").exists()


@pytest.mark.parametrize("split", ["../up", "a/b", "..", ".hidden", "x.y", ""])
def test_split_names_are_plain_names(split, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"]["sample"]["splits"][split] = {"annotations": "a.json", "images": "val"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"datasets\.sample\.splits\..*should match pattern"):
        load_params(path)


def test_a_dataset_needs_a_split(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"]["sample-yolo"]["splits"] = {}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"datasets\.sample-yolo\.splits: .*at least 1 item"):
        load_params(path)


# --- geometry that pycocotools trusts ----------------------------------------------------------


def box_rle(width: int, height: int) -> str:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[3:11, 2:12] = 1  # the first box of tiny_coco
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode()


BAD_RLES = {
    "runs short of the image": ("0:", "add up to 10 pixels, not 32*48"),
    "runs beyond the image": (box_rle(48, 40), "add up to 1920 pixels, not 32*48"),
    "negative run": ("@" + box_rle(48, 32), "negative run length"),
    "outside the code": ("0 :", "characters outside '0'..'o'"),
    "truncated": (box_rle(48, 32) + "P", "end inside a run"),
    "over-long run": ("PPPPPPPP0", "more than 7 characters"),
    "not ASCII": ("0é", "must be ASCII"),
    "empty run": (
        mask_utils.frPyObjects({"size": [32, 48], "counts": [0, 0, 1536]}, 32, 48)[
            "counts"
        ].decode(),
        "an empty run after the first",
    ),
}


@pytest.mark.parametrize("damage", BAD_RLES)
def test_a_compressed_rle_must_cover_its_image_exactly(damage, tmp_path):
    """pycocotools' merge loops forever (ignoring Ctrl-C) on runs that do not add up."""
    tiny = tiny_coco(tmp_path)
    counts, text = BAD_RLES[damage]
    set_annotation(tiny, 0, segmentation={"size": [32, 48], "counts": counts}, iscrowd=1)
    assert_refused(tiny, tiny.annotations, FIRST_ANNOTATION, text, {0})


@pytest.mark.parametrize(
    ("segmentation", "text"),
    [
        ({"size": [32, 48], "counts": [5, 5]}, "counts sum to 10, not 32*48"),
        ({"size": [32, 48], "counts": [-1, 1537]}, "non-negative integers"),
        ({"size": [32, 48], "counts": [0, 5, 0, 1531]}, "an empty run after the first"),
        ({"size": [48, 32], "counts": box_rle(48, 32)}, "RLE size [48, 32] differs"),
        ({"size": [32.0, 48.0], "counts": box_rle(48, 32)}, "RLE size [32.0, 48.0] differs"),
        ({"size": [32, 48]}, "RLE counts must be a string"),
        ([[2, 3, 12, 3, 12]], "segmentation polygon 0 must be"),
        ([[2, 3, 12, 3, 12, "11"]], "segmentation polygon 0 must be"),
        ([[2, 3, 12, 3, 12, 10**400]], "segmentation polygon 0 must be"),
    ],
)
def test_rles_and_polygons_are_checked_before_pycocotools_reads_them(segmentation, text, tmp_path):
    tiny = tiny_coco(tmp_path)
    set_annotation(tiny, 0, segmentation=segmentation, iscrowd=int(isinstance(segmentation, dict)))
    assert_refused(tiny, tiny.annotations, FIRST_ANNOTATION, text, {0})


def test_a_valid_compressed_rle_is_accepted(tmp_path):
    tiny = tiny_coco(tmp_path)
    set_annotation(tiny, 0, segmentation={"size": [32, 48], "counts": box_rle(48, 32)})
    data, _ = tiny.prepare()
    assert data["annotations"][0]["segmentation"]["counts"] == box_rle(48, 32)


@pytest.mark.parametrize("iscrowd", [2, -1, "yes", 0.5, None])
def test_iscrowd_must_be_0_or_1(iscrowd, tmp_path):
    tiny = tiny_coco(tmp_path)
    set_annotation(tiny, 0, iscrowd=iscrowd)
    assert_refused(tiny, tiny.annotations, FIRST_ANNOTATION, "iscrowd must be 0 or 1", {0})


# --- boxes and areas that disagree with their segmentation ------------------------------------

POLYGON = [[2, 3, 12, 3, 12, 11, 2, 11]]  # the first box of tiny_coco, as a polygon


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"bbox": [2.0, 3.0, 0.0, 0.0]}, "bbox [2.0, 3.0, 0.0, 0.0] disagrees with its"),
        ({"bbox": [20.0, 10.0, 10.0, 8.0]}, "disagrees with its segmentation's extent"),
        ({"area": 1}, "area 1 disagrees with the 80 pixels"),
        ({"area": 500}, "area 500 disagrees with the 80 pixels"),
        ({"area": "80"}, "area must be a non-negative number"),
    ],
)
def test_a_bbox_or_area_that_disagrees_with_the_segmentation_is_refused(fields, text, tmp_path):
    tiny = tiny_coco(tmp_path)
    set_annotation(tiny, 0, segmentation=POLYGON, **fields)
    assert_refused(tiny, tiny.annotations, FIRST_ANNOTATION, text, {0})


def test_bbox_and_area_within_tolerance_are_kept_and_missing_ones_computed(tmp_path):
    tiny = tiny_coco(tmp_path)
    set_annotation(tiny, 0, segmentation=POLYGON, bbox=[2.5, 2.2, 10.4, 8.9], area=95.5)
    data, _ = tiny.prepare()
    assert (data["annotations"][0]["bbox"], data["annotations"][0]["area"]) == (
        [2.5, 2.2, 10.4, 8.9],
        95.5,
    )

    def strip(coco):
        del coco["annotations"][0]["bbox"], coco["annotations"][0]["area"]

    tiny.edit_json(strip)
    data, _ = tiny.prepare()
    assert (data["annotations"][0]["bbox"], data["annotations"][0]["area"]) == (
        [2.0, 3.0, 10.0, 8.0],
        80,
    )


def test_a_crowd_rle_box_elsewhere_is_refused(tmp_path):
    tiny = tiny_coco(tmp_path)
    rle = {"size": [32, 48], "counts": box_rle(48, 32)}
    set_annotation(tiny, 0, segmentation=rle, iscrowd=1, bbox=[2.0, 3.0, 11.0, 9.0])
    tiny.prepare()  # COCO's crowd boxes are 1 px wider than their pixels: kept
    set_annotation(tiny, 0, bbox=[30.0, 3.0, 10.0, 8.0])
    assert_refused(tiny, tiny.annotations, FIRST_ANNOTATION, "its pixels' [2.0, 3.0", {0})


# --- categories ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "text"),
    [
        ({"id": 1, "name": "other"}, "duplicate category id 1 (also categories[0] (id=1, name="),
        ({"id": 2}, "a category needs a name"),
        ({"id": 2, "name": ""}, "a category needs a name"),
        ({"id": "2", "name": "other"}, "a category needs an integer id"),
        ({"id": True, "name": "other"}, "a category needs an integer id"),
    ],
)
def test_categories_need_their_own_integer_id_and_a_name(category, text, tmp_path):
    """Never skipped: every annotation's class and every coded data.yaml depend on them."""
    tiny = tiny_coco(tmp_path)
    tiny.edit_json(lambda coco: coco["categories"].append(category))
    for on_error in ("raise", "skip"):
        with pytest.raises(InputError) as err:
            tiny.prepare(on_error)
        assert (err.value.file, err.value.entry.split(" ")[0]) == (
            str(tiny.annotations),
            "categories[1]",
        )
        assert text in err.value.reason


# --- names that collide ------------------------------------------------------------------------


def test_images_sharing_a_stem_are_refused(tmp_path):
    """`im1.png` and `im1.jpg` would share one coded PNG, bitstream and label file."""
    tiny = tiny_coco(tmp_path)
    Image.fromarray(tiny.pixels[2]).save(tiny.images / "im1.jpg", quality=95)
    set_image(tiny, 2, file_name="im1.jpg")
    with pytest.raises(InputError) as err:
        tiny.prepare()
    assert (err.value.file, err.value.entry) == (str(tiny.annotations), FIRST_IMAGE)
    assert "2 images ('im1.png', 'im1.jpg') share the stem 'im1'" in err.value.reason
    data, problems = tiny.prepare("skip")
    assert [im["file_name"] for im in data["images"]] == ["im2.png"]
    assert len(problems.skipped) == 2


def test_one_file_listed_twice_is_refused(tmp_path):
    tiny = tiny_coco(tmp_path)
    set_image(tiny, 2, file_name="im2.png", width=40, height=40)
    with pytest.raises(InputError, match=r"2 images \('im2.png', 'im2.png'\) share the stem"):
        tiny.prepare()


def test_one_stem_in_two_folders_codes_to_two_files(tmp_path):
    tiny = tiny_coco(tmp_path)
    for index, folder in ((0, "a"), (1, "b")):
        (tiny.images / folder).mkdir()
        shutil.move(tiny.image(index), tiny.images / folder / "x.png")
        set_image(tiny, index, file_name=f"{folder}/x.png")
    encode_dataset(JPEG, {"val": prepared(tiny, tmp_path / "prepared")}, tmp_path / "coded")
    for kind, suffix in (("bitstreams", "jpg"), ("images", "png"), ("labels", "txt")):
        folder = tmp_path / "coded" / kind / "val"
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob(f"*.{suffix}"))
        assert found == [f"a/x.{suffix}", f"b/x.{suffix}", f"im3.{suffix}"]


# --- coded datasets that ultralytics reads -----------------------------------------------------


def test_coded_labels_are_where_ultralytics_looks_for_them(tmp_path):
    """Images in subfolders (as in coco-voc3's `JPEGImages/…`), even one named `images`."""
    from ultralytics.data.utils import img2label_paths

    tiny = tiny_coco(tmp_path)
    for index, folder in ((0, "JPEGImages"), (1, "a/images")):
        (tiny.images / folder).mkdir(parents=True)
        shutil.move(tiny.image(index), tiny.images / folder / f"im{index + 1}.png")
        set_image(tiny, index, file_name=f"{folder}/im{index + 1}.png")
    encode_dataset(JPEG, {"val": prepared(tiny, tmp_path / "prepared")}, tmp_path / "coded")
    coded = sorted((tmp_path / "coded" / "images" / "val").rglob("*.png"))
    assert len(coded) == len(SIZES)
    for label in img2label_paths([str(p) for p in coded]):
        rows = Path(label).read_text().splitlines()
        assert len(rows) == 2 and all(row.startswith("0 ") for row in rows), label


def test_ultralytics_never_sees_an_orientation_tag_its_labels_do_not_follow(tmp_path):
    """Ultralytics rotates a tagged image when it reads it; icmflow's labels refer to the
    stored pixels, so the training layout holds the stored pixels without the tag."""
    from ultralytics.data.utils import img2label_paths
    from ultralytics.utils.patches import imread

    tiny = tiny_coco(tmp_path)
    exif_jpeg(tiny.images / "im1.jpg", tiny.pixels[0], orientation=6)
    tiny.image(0).unlink()
    set_image(tiny, 0, file_name="im1.jpg")
    dataset = prepared(tiny, tmp_path / "prepared")
    write_yolo_layout(TrainingData(coco=dataset.path), tmp_path / "layout", segments=False)
    files = sorted((tmp_path / "layout" / "images" / "train").iterdir())
    assert [f.name for f in files] == ["im1.png", "im2.png", "im3.png"]
    for file, image in zip(files, dataset.images, strict=True):
        assert read_header(file).orientation == 1
        pixels = imread(str(file))  # as ultralytics' trainer reads it
        np.testing.assert_array_equal(pixels[..., ::-1], read_rgb(dataset.image_path(image)))
        (label,) = img2label_paths([str(file)])
        assert len(Path(label).read_text().splitlines()) == 2


def test_prepare_notes_every_orientation_tag(tmp_path):
    tiny = tiny_coco(tmp_path)
    exif_jpeg(tiny.images / "im1.jpg", tiny.pixels[0], orientation=3)
    tiny.image(0).unlink()
    set_image(tiny, 0, file_name="im1.jpg")
    paths = Paths(tmp_path / "project")
    prepare.run(tiny_params(tiny), paths, "tiny")
    report = json.loads((paths.prepared("tiny") / "report.json").read_text())
    (note,) = report["notes"]
    assert (note["file"], note["entry"]) == (
        str(tiny.annotations),
        "images[0] (id=1, file_name='im1.jpg')",
    )
    assert note["note"].startswith("its EXIF orientation tag is 3 (viewers show it rotated by")
    assert "icmflow reads the stored 48x32 pixels and ignores the tag" in note["note"]


# --- nothing to average over -------------------------------------------------------------------


def test_a_split_without_images_is_an_error(tmp_path):
    tiny = tiny_coco(tmp_path)
    tiny.edit_json(lambda coco: coco.update(images=[], annotations=[]))
    paths = Paths(tmp_path / "project")
    with pytest.raises(InputError, match="split 'val' of dataset 'tiny' has no images: ") as err:
        prepare.run(tiny_params(tiny), paths, "tiny")
    assert err.value.file == str(tiny.annotations)
    assert not paths.prepared("tiny").exists()


def test_a_split_whose_every_image_is_skipped_is_an_error(tmp_path):
    tiny = tiny_coco(tmp_path)
    for index in range(len(SIZES)):
        tiny.image(index).unlink()
    with pytest.raises(InputError, match="has no images left after the skips logged above"):
        prepare.run(tiny_params(tiny, on_error="skip"), Paths(tmp_path / "project"), "tiny")


def test_stages_refuse_an_empty_dataset(tmp_path):
    tiny = tiny_coco(tmp_path)
    dataset = prepared(tiny, tmp_path / "prepared")
    empty = {**dataset.data, "images": [], "annotations": []}
    dataset.path.write_text(json.dumps(empty))
    with pytest.raises(InputError, match="no images: every stage would average over nothing"):
        PreparedDataset.load(dataset.path)
    with pytest.raises(InputError, match="no images to encode"):
        encode_dataset(JPEG, {"val": PreparedDataset(dataset.path, empty)}, tmp_path / "coded")
    assert not (tmp_path / "coded").exists()


# --- files that are no annotations -------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"images": ' + "[" * 100_000])
def test_deeply_nested_json_is_an_error_naming_the_file(text, tmp_path):
    tiny = tiny_coco(tmp_path)
    tiny.annotations.write_text(text)
    with pytest.raises(InputError, match="JSON nested too deeply") as err:
        tiny.prepare("skip")
    assert err.value.file == str(tiny.annotations)


def test_a_deeply_nested_dataset_yaml_is_an_error_naming_it(tmp_path):
    tiny = write_tiny("yolo", tmp_path / "yolo")
    (tiny.root / "data.yaml").write_text("names: " + "[" * 100_000)
    with pytest.raises(InputError, match="exceeded maximum nesting depth") as err:
        tiny.prepare("skip")  # at once: Python's own YAML parser took minutes on this
    assert err.value.file == str(tiny.root / "data.yaml")
    assert err.value.entry.startswith("line 1 column ")


def test_yaml_errors_are_one_line(tmp_path):
    tiny = write_tiny("yolo", tmp_path / "yolo")
    (tiny.root / "data.yaml").write_text("names: [")
    with pytest.raises(InputError) as err:
        tiny.prepare()
    assert (err.value.entry, "\n" in str(err.value)) == ("line 2 column 1", False)


@pytest.mark.parametrize(
    ("sample", "annotations", "images"),
    [
        ("coco-val158", "instances_val2017.json", "images"),
        ("coco-train160", "instances_train2017.json", "images"),
        ("coco-voc3", "annotations.json", "."),
    ],
)
def test_real_coco_passes_every_check(sample, annotations, images):
    """The tolerances of the bbox and area checks admit real COCO (and a VOC export)."""
    root = real_sample(sample)
    problems = ProblemLog("raise")
    data = prepare_coco(root / annotations, root / images, problems, decode_images=False)
    source = json.loads((root / annotations).read_text())
    assert len(data["annotations"]) == len(source["annotations"]) > 0
    assert not problems.notes  # no orientation tags
