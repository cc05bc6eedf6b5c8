import json
import re
import shutil

import pytest

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import prepare_coco
from icmflow.datasets.prepared import PreparedDataset, write_prepared


@pytest.fixture
def copy(sample_root, tmp_path):
    """A private copy of the sample's val split to damage."""
    root = tmp_path / "coco"
    shutil.copytree(sample_root / "val", root / "val")
    annotations = root / "instances_val.json"
    shutil.copy(sample_root / "annotations" / "instances_val.json", annotations)
    return annotations, root / "val"


def edit(path, change) -> dict:
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    return coco


def test_prepared_sample_is_normalised(sample_prepared):
    val = sample_prepared["val"]
    assert [im["id"] for im in val.images] == sorted(im["id"] for im in val.images)
    assert all({"bbox", "area", "iscrowd", "id"} <= set(a) for a in val.data["annotations"])
    assert all(val.image_path(im).is_file() for im in val.images)
    assert not val.data["icmflow"]["image_root"].startswith("/")  # relative: the folder can move


def test_missing_image_names_file_and_entry(copy):
    annotations, images = copy
    coco = json.loads(annotations.read_text())
    victim = coco["images"][2]
    (images / victim["file_name"]).unlink()
    with pytest.raises(InputError) as err:
        prepare_coco(annotations, images, ProblemLog("raise"))
    message = str(err.value)
    assert str(annotations) in message
    assert f"images[2] (id={victim['id']}, file_name='{victim['file_name']}')" in message
    assert "image file not found" in message


def test_missing_image_is_a_logged_skip_with_its_annotations(copy):
    annotations, images = copy
    coco = json.loads(annotations.read_text())
    victim = coco["images"][0]
    (images / victim["file_name"]).unlink()
    problems = ProblemLog("skip")
    prepared = prepare_coco(annotations, images, problems)
    assert victim["id"] not in {im["id"] for im in prepared["images"]}
    assert all(a["image_id"] != victim["id"] for a in prepared["annotations"])
    assert len(problems.skipped) == 1 and "not found" in problems.skipped[0].reason


def test_truncated_json_names_file_and_position(copy):
    annotations, images = copy
    text = annotations.read_text()
    annotations.write_text(text[: len(text) // 2])
    with pytest.raises(InputError) as err:
        prepare_coco(annotations, images, ProblemLog("skip"))  # cannot be skipped
    assert str(annotations) in str(err.value)
    assert re.search(r"line \d+ column \d+: invalid JSON", str(err.value))
    assert "truncated" in str(err.value)


def test_polygon_outside_the_image(copy):
    annotations, images = copy
    polygon_index = None

    def push_out(coco):
        nonlocal polygon_index
        polygon_index = next(
            i for i, a in enumerate(coco["annotations"]) if isinstance(a["segmentation"], list)
        )
        polygon = coco["annotations"][polygon_index]["segmentation"][0]
        polygon[0] = 5000.0

    edit(annotations, push_out)
    with pytest.raises(InputError, match=rf"annotations\[{polygon_index}\] \(id=.*outside the"):
        prepare_coco(annotations, images, ProblemLog("raise"))
    problems = ProblemLog("skip")
    prepared = prepare_coco(annotations, images, problems)
    assert len(problems.skipped) == 1
    assert "is left out too, so that no mask misses an object" in problems.skipped[0].reason
    coco = json.loads(annotations.read_text())
    victim = coco["annotations"][polygon_index]["image_id"]  # its mask would miss the object
    assert victim not in {im["id"] for im in prepared["images"]}
    kept = [a for a in coco["annotations"] if a["image_id"] != victim]
    assert [a["id"] for a in prepared["annotations"]] == [a["id"] for a in kept]


def test_size_mismatch(copy):
    annotations, images = copy
    edit(annotations, lambda coco: coco["images"][1].update(width=999))
    with pytest.raises(InputError, match="the JSON says 999x"):
        prepare_coco(annotations, images, ProblemLog("raise"))


def test_unknown_category_is_rejected(copy):
    annotations, images = copy
    edit(annotations, lambda coco: coco["annotations"][0].update(category_id=77))
    with pytest.raises(InputError, match="unknown category_id 77"):
        prepare_coco(annotations, images, ProblemLog("raise"))


def test_corrupt_image_file(copy):
    annotations, images = copy
    coco = json.loads(annotations.read_text())
    path = images / coco["images"][0]["file_name"]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot be decoded"):
        prepare_coco(annotations, images, ProblemLog("raise"))


def test_zero_annotation_ids_are_renumbered(copy, tmp_path):
    annotations, images = copy
    edit(annotations, lambda coco: [a.update(id=0) for a in coco["annotations"]])
    prepared = prepare_coco(annotations, images, ProblemLog("raise"))
    ids = [a["id"] for a in prepared["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    write_prepared(
        tmp_path / "p" / "val.json", prepared, image_root=images, final_dir=tmp_path / "p"
    )
    assert PreparedDataset.load(tmp_path / "p" / "val.json").image_root == images.resolve()
