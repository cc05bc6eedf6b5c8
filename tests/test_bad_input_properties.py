"""Generated hostile inputs: damaged copies of the tiny dataset of every layout.

For each, `prepare` runs in this process as the CLI runs it, with `on_error` raise and skip, and
ends in one of three ways: it succeeds; it stops with an `IcmflowError` whose message is one line
naming a file of the dataset (the CLI's exit 1); or (skip) it logs skips that name files of the
dataset. Never another exception (the CLI's exit 2: a bug), never a hang. What prepare accepts
then builds its masks and codes (JPEG) without error, and nothing outside the project changes.

The examples are fixed (`derandomize`) so that the default suite is repeatable; to search more,
run with `ICMFLOW_HYPOTHESIS_EXAMPLES=500` (random examples, as many per layout).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.core.errors import IcmflowError
from icmflow.datasets.coco import geometry_problem
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, decode
from icmflow.masks.build import build_object_masks
from icmflow.pipeline.paths import Paths
from icmflow.stages import prepare
from tests.helpers.layouts import FORMATS, SIZES, Tiny, tiny_params, write_tiny
from tests.helpers.project import store_files

EXAMPLES = int(os.environ.get("ICMFLOW_HYPOTHESIS_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=EXAMPLES or 12,
    derandomize=not EXAMPLES,
    deadline=timedelta(seconds=20),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TIMEOUT_S = 30
"""What one example may take before it counts as a hang (it takes well under a second)."""
OUTSIDE = "outside.png"
"""A real image beside the dataset, outside the project, that hostile names point at."""

# --- values ------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
NUMBERS = st.one_of(
    st.floats(-60, 60, allow_nan=False),
    st.integers(-5, 60),
    st.sampled_from([float("nan"), float("inf"), 10**400, "7", None, True]),
)
RLE_CHARS = "".join(chr(c) for c in range(48, 112))
RLES = st.fixed_dictionaries(
    {
        "size": st.sampled_from([[32, 48], [48, 32], [32.0, 48.0], [32], "32x48", None]),
        "counts": st.one_of(
            st.text(alphabet=RLE_CHARS, max_size=12),
            st.text(max_size=6),
            st.lists(st.integers(-3, 1600), max_size=5),
            st.just([0, 1536]),
        ),
    }
)
POLYGONS = st.lists(st.lists(NUMBERS, max_size=9), max_size=2)


ROOT = "<scratch>"
"""Stands for the example's scratch folder (not known when examples are drawn)."""
FILE_NAMES = st.sampled_from(
    [
        f"{ROOT}/{OUTSIDE}",
        f"../../../{OUTSIDE}",
        f"sub/../../../../{OUTSIDE}",
        "../images/im1.png",
        "./im1.png",
        "im2.png",
        "im1.jpg",
        "IM1.png",
        "",
        ".",
        "/",
        "im1",
        "im1.png/",
        "a\nb.png",
        "a\x00b.png",
    ]
)
"""`file_name`s that leave the image folder, collide, or name nothing."""


COCO_FIELDS = {
    "images": ["file_name", "file_name", "id", "width", "height"],
    "annotations": ["segmentation", "segmentation", "bbox", "area", "iscrowd", "image_id", "id"],
    "categories": ["id", "name", "name"],
}
TARGETED = {
    "file_name": FILE_NAMES,
    "segmentation": st.one_of(RLES, RLES, POLYGONS),
    "bbox": st.lists(NUMBERS, max_size=5),
    "area": NUMBERS,
    "iscrowd": st.sampled_from([0, 1, 2, -1, "1", 0.5, None, True]),
    "width": st.sampled_from([48, 32, 0, -48, 48.0, "48", 10**12]),
    "height": st.sampled_from([32, 48, 0, 32.0, None]),
    "id": st.sampled_from([1, 2, 0, -1, "1", 1.5, None, True]),
    "image_id": st.sampled_from([1, 2, 3, 4, 0, "1", None]),
    "name": st.sampled_from(["thing", "", None, 1, "other"]),
}


@st.composite
def json_edit(draw) -> tuple:
    """One change to the COCO JSON: a field set (mostly to a value aimed at it) or deleted, an
    entry duplicated or removed, or the whole text replaced."""
    kind = draw(st.sampled_from(["set"] * 6 + ["delete", "duplicate", "remove", "text"]))
    if kind == "text":
        texts = ["[" * 50_000, '{"images": ' + "{" * 50_000, "", "{}", "null", '{"images": 1}']
        return ("json", "text", draw(st.sampled_from(texts)))
    section = draw(st.sampled_from(["images", "annotations", "annotations", "categories"]))
    index = draw(st.integers(0, 5))
    if kind in ("duplicate", "remove"):
        return ("json", kind, section, index)
    field = draw(st.sampled_from(COCO_FIELDS[section]))
    if kind == "delete":
        return ("json", kind, section, index, field)
    value = draw(st.one_of(TARGETED[field], TARGETED[field], TARGETED[field], JSON_VALUES))
    return ("json", kind, section, index, field, value)


def apply_json_edit(tiny: Tiny, kind: str, *args) -> None:
    if kind == "text":
        tiny.annotations.write_text(args[0])
        return
    try:
        coco = json.loads(tiny.annotations.read_text())
        entries = coco[args[0]]
        entry = entries[args[1] % len(entries)]
    except (ValueError, RecursionError, LookupError, TypeError, ZeroDivisionError):
        return  # an earlier edit left nothing of the kind to change
    if kind == "duplicate":
        entries.append(json.loads(json.dumps(entry)))
    elif kind == "remove":
        entries.remove(entry)
    elif kind == "delete":
        entry.pop(args[2], None)
    else:
        value = args[3]
        if isinstance(value, str) and value.startswith(ROOT):
            value = str(tiny.root.parent) + value.removeprefix(ROOT)
        entry[args[2]] = value
    tiny.annotations.write_text(json.dumps(coco))


# --- folder layouts ----------------------------------------------------------------------------

LINE_CHARS = "0123456789 ,.-+eE\tnaif"
YOLO_ROWS = st.one_of(
    st.text(alphabet=LINE_CHARS, max_size=30),
    st.lists(NUMBERS, min_size=5, max_size=9).map(lambda v: " ".join(map(str, v))),
)
VISDRONE_ROWS = st.one_of(
    st.text(alphabet=LINE_CHARS, max_size=30),
    st.lists(st.integers(-5, 60) | NUMBERS, min_size=7, max_size=9).map(
        lambda v: ",".join(map(str, v))
    ),
)
NAMES = st.one_of(
    JSON_VALUES,
    st.lists(st.sampled_from(["thing", "", "other"]), max_size=3),
    st.dictionaries(st.integers(-1, 3), st.sampled_from(["thing", "other"]), max_size=2),
)
LABEL_VALUES = st.sampled_from(
    [0, 7, 24, 26, 29, 34, 500, 999, 1000, 7001, 26000, 26001, 29000, 65535]
)


@st.composite
def label_edit(draw, format: str) -> tuple:
    """One change to a label file (`image` picks which) or to the dataset YAML."""
    image = draw(st.integers(0, len(SIZES) - 1))
    if format == "cityscapes":
        kind = draw(st.sampled_from(["ids", "ids", "shape", "rgb", "bytes", "delete", "labels"]))
        if kind in ("ids", "labels"):
            return ("label", kind, image, draw(LABEL_VALUES), draw(st.integers(0, 31)))
        return ("label", kind, image, draw(st.binary(max_size=20)))
    kinds = ["row", "row", "row", "bytes", "delete"]
    kinds += ["yaml", "yaml text"] if format == "yolo" else []
    kind = draw(st.sampled_from(kinds))
    if kind == "row":
        rows = YOLO_ROWS if format == "yolo" else VISDRONE_ROWS
        return ("label", kind, image, draw(st.integers(0, 2)), draw(rows))
    if kind == "yaml":
        return ("label", kind, image, draw(NAMES), draw(st.sampled_from([None, 1, 2, "x"])))
    if kind == "yaml text":
        texts = ["[" * 50_000, "names: [", "names: {0: thing, 0: other}", "\x00", "- 1"]
        return ("label", kind, image, draw(st.sampled_from(texts)))
    return ("label", kind, image, draw(st.binary(max_size=20)))


def apply_label_edit(tiny: Tiny, kind: str, image: int, *args) -> None:
    if kind == "yaml":
        config = {"val": "images/val", "names": args[0]}
        if args[1] is not None:
            config["nc"] = args[1]
        (tiny.root / "data.yaml").write_text(yaml.safe_dump(config))
        return
    if kind == "yaml text":
        (tiny.root / "data.yaml").write_text(args[0])
        return
    label = tiny.label(image)
    if kind == "delete":
        label.unlink(missing_ok=True)
    elif kind == "bytes":
        label.write_bytes(args[0])
    elif kind == "row":
        lines = label.read_text(errors="replace").splitlines() if label.is_file() else []
        lines.insert(min(args[0], len(lines)), args[1])
        label.write_text("\n".join(lines) + "\n")
    elif kind in ("ids", "labels"):
        if kind == "labels":
            label = label.with_name(label.name.replace("instanceIds", "labelIds"))
        if not label.is_file():
            return
        ids = np.asarray(Image.open(label)).astype(np.uint16)
        ids[args[1] % ids.shape[0], :] = args[0]
        Image.fromarray(ids if kind == "ids" else ids.astype(np.uint8)).save(label)
    elif kind == "shape":
        Image.fromarray(np.full((5, 7), 26001, dtype=np.uint16)).save(label)
    else:  # rgb
        Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(label)


# --- image files -------------------------------------------------------------------------------


@st.composite
def image_edit(draw) -> tuple:
    """One change to an image file: damaged bytes, another size, an EXIF orientation tag, a
    twin with the same stem, or gone."""
    kind = draw(st.sampled_from(["truncate", "bytes", "resize", "exif", "twin", "delete"]))
    image = draw(st.integers(0, len(SIZES) - 1))
    value = draw(st.integers(1, 8)) if kind == "exif" else draw(st.binary(max_size=12))
    return ("image", kind, image, value)


def apply_image_edit(tiny: Tiny, kind: str, index: int, value) -> None:
    path = tiny.image(index)
    if not path.is_file():
        return
    if kind == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "bytes":
        path.write_bytes(value)
    elif kind == "resize":
        Image.fromarray(tiny.pixels[index][:, : SIZES[index][1]]).save(path)
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = value
        Image.fromarray(tiny.pixels[index]).save(path, format="PNG", exif=exif)
    elif kind == "twin":
        Image.fromarray(tiny.pixels[index]).save(path.with_suffix(".jpg"))
    else:
        path.unlink()


# --- the property ------------------------------------------------------------------------------


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """A hang in Python code raises `TimeoutError`; a hang in C code that ignores signals (as
    pycocotools' merge on bad RLE counts does) ends the process with every thread's traceback."""

    def alarm(signum, frame):
        raise TimeoutError(f"no result after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def assert_names_the_dataset(message: str, tiny: Tiny) -> None:
    assert "\n" not in message.strip(), f"more than one line: {message!r}"
    assert str(tiny.root) in message, f"names no file of the dataset: {message!r}"


def prepare_outcome(tiny: Tiny, project: Path, on_error: str) -> Path | None:
    """Run prepare as the CLI does: its output folder, or None after a clear error."""
    paths = Paths(project / on_error)
    try:
        prepare.run(tiny_params(tiny, on_error=on_error), paths, "tiny")
    except IcmflowError as err:  # exit 1; anything else propagates: exit 2, a bug
        assert_names_the_dataset(str(err), tiny)
        return None
    report = json.loads((paths.prepared("tiny") / "report.json").read_text())
    for skip in report["skipped"]:
        assert_names_the_dataset(f"{skip['file']}: {skip['entry']}: {skip['reason']}", tiny)
    assert on_error == "skip" or not report["skipped"]
    return paths.prepared("tiny")


def use_prepared(folder: Path, out: Path) -> None:
    """What later stages do with a prepared split: masks (in this process) and coding."""
    dataset = PreparedDataset.load(folder / "val.json")
    build_object_masks(
        dataset.data,
        out / "masks.zarr",
        work=out / "masks-work",
        source=str(dataset.path),
        include_crowd=True,
        images_per_shard=4,
        client=None,
    )
    encode_dataset(CLASSICAL["jpeg"](family="jpeg", quality=50), {"val": dataset}, out / "coded")


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Tiny]:
    root = tmp_path_factory.mktemp("templates")
    return {format: write_tiny(format, root / format) for format in FORMATS}


APPLY = {"json": apply_json_edit, "label": apply_label_edit, "image": apply_image_edit}
EDITS = {
    format: st.lists(
        st.one_of(json_edit() if format == "coco" else label_edit(format), image_edit()),
        min_size=1,
        max_size=2,
    )
    for format in FORMATS
}


@pytest.mark.parametrize("format", FORMATS)
@given(data=st.data())
@SETTINGS
def test_hostile_inputs_end_in_a_clear_error_a_logged_skip_or_a_clean_run(templates, format, data):
    edits = data.draw(EDITS[format], label="edits")
    with (
        tempfile.TemporaryDirectory() as tmp,
        watchdog(TIMEOUT_S),
        mock.patch.object(prepare, "write_provenance"),  # not what this test is about
    ):
        root = Path(tmp)
        tiny = templates[format].copy(root / "dataset")
        (root / OUTSIDE).write_bytes(tiny.image(0).read_bytes())
        for edit in edits:
            APPLY[edit[0]](tiny, *edit[1:])
        before = store_files(root)
        project = root / "project"
        prepare_outcome(tiny, project, "raise")  # what it accepts, skip accepts the same
        folder = prepare_outcome(tiny, project, "skip")
        if folder is not None:
            use_prepared(folder, project / "later")
        after = {k: v for k, v in store_files(root).items() if not k.startswith("project/")}
        assert after == before, "a file outside the project changed"


@st.composite
def damaged_counts(draw) -> tuple[str, int, int]:
    """A compressed RLE of a random mask, with one character replaced, inserted or removed."""
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    bits = draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    mask = np.asarray(bits, dtype=np.uint8).reshape(height, width)
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
    at = draw(st.integers(0, len(counts)))
    char = draw(st.sampled_from(RLE_CHARS))
    replaced, inserted = counts[:at] + char + counts[at + 1 :], counts[:at] + char + counts[at:]
    counts = draw(st.sampled_from([counts, replaced, inserted, counts[:at] + counts[at + 1 :]]))
    return counts, height, width


@st.composite
def uncompressed_counts(draw) -> tuple[list[int], int, int]:
    """Uncompressed run lengths (as COCO's crowd regions hold them) of a 1-row image."""
    runs = draw(st.lists(st.integers(0, 4), min_size=1, max_size=8).filter(lambda r: sum(r)))
    return runs, 1, sum(runs)


@given(st.one_of(damaged_counts(), uncompressed_counts()))
@settings(SETTINGS, max_examples=EXAMPLES or 200)
def test_rle_counts_that_pass_the_check_are_read_alike_by_pycocotools(case):
    """RLEs that prepare accepts never hang pycocotools (whose merge loops forever on runs that
    do not add up, and gives garbage on empty runs) and decode there as in icmflow."""
    counts, height, width = case
    annotation = {"segmentation": {"size": [height, width], "counts": counts}}
    if geometry_problem(annotation, width, height):
        return  # refused at prepare
    rle = annotation_rle(annotation, height, width)  # as masks read it
    with watchdog(TIMEOUT_S):
        merged = mask_utils.merge([rle, rle], intersect=False)
        expected = mask_utils.decode(rle).astype(bool)
    np.testing.assert_array_equal(decode(rle), expected)
    np.testing.assert_array_equal(decode(merged), expected)
    assert int(mask_utils.area(rle)) == int(expected.sum())
