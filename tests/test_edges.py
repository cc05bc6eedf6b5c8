"""Edge masks: boundaries of hand-made masks, SAM's own masks, the edge store and its resumption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from icmflow.datasets.images import read_rgb
from icmflow.masks import edges as edges_module
from icmflow.masks.edges import (
    EdgeSettings,
    automatic_masks,
    build_edge_masks,
    canny_edges,
    edge_mask,
    mask_edges,
    segmentation_map,
)
from icmflow.masks.store import MaskStore
from icmflow.runtime.cluster import dask_client
from icmflow.vision.sam.model import SamSpec, sam_session
from tests.helpers.project import REPO, store_files
from tests.helpers.sam_models import TINY, register_tiny_sam, tiny_sams_built

TINY_SPEC = SamSpec(TINY, device="cpu")
NO_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(autouse=True)
def tiny_sam():
    register_tiny_sam()


def edges_of(mask: np.ndarray, width: int) -> np.ndarray:
    return mask_edges(torch.from_numpy(mask)[None], width)[0].numpy()


def test_square_boundary_is_width_pixels_inside_the_square():
    mask = np.zeros((12, 14), dtype=bool)
    mask[3:9, 4:10] = True  # 6×6
    for width, inner in ((1, (slice(4, 8), slice(5, 9))), (2, (slice(5, 7), slice(6, 8)))):
        expected = mask.copy()
        expected[inner] = False  # the 4×4 (width 1) or 2×2 (width 2) interior stays
        np.testing.assert_array_equal(edges_of(mask, width), expected)
    np.testing.assert_array_equal(edges_of(mask, 3), mask)  # no pixel is 3 away from outside


def test_image_border_is_no_boundary_and_diagonals_count():
    left = np.zeros((10, 12), dtype=bool)
    left[:, :7] = True
    expected = np.zeros_like(left)
    expected[:, 6] = True  # only the side that meets the rest of the image
    np.testing.assert_array_equal(edges_of(left, 1), expected)
    expected[:, 5] = True
    np.testing.assert_array_equal(edges_of(left, 2), expected)

    hole = np.ones((5, 6), dtype=bool)
    hole[0, 0] = False
    expected = np.zeros_like(hole)
    expected[0, 1] = expected[1, 0] = expected[1, 1] = True  # its 8-neighbours in the mask
    np.testing.assert_array_equal(edges_of(hole, 1), expected)

    for flat in (np.zeros((4, 5), dtype=bool), np.ones((4, 5), dtype=bool)):
        assert not edges_of(flat, 1).any()
    with pytest.raises(ValueError, match="at least 1"):
        edges_of(hole, 0)


def test_masks_that_meet_get_both_sides_drawn():
    top = np.zeros((8, 6), dtype=bool)
    top[:4] = True
    union = mask_edges(torch.from_numpy(np.stack([top, ~top])), 1).any(0).numpy()
    expected = np.zeros_like(top)
    expected[3:5] = True  # row 3 from the top mask, row 4 from the bottom one
    np.testing.assert_array_equal(union, expected)


def test_canny_draws_each_change_of_region_once_on_its_top_left_side():
    halves = np.zeros((6, 10), dtype=np.int32)
    halves[:, 5:] = 256  # differs from 0 in the second byte only: 24-bit colours keep it
    expected = np.zeros(halves.shape, dtype=bool)
    expected[:, 4] = True  # one pixel wide, before the step, the image border no edge
    np.testing.assert_array_equal(canny_edges(halves, 1), expected)
    np.testing.assert_array_equal(canny_edges(halves.T.copy(), 1), expected.T)
    expected[:, 3] = expected[:, 5] = True  # width 2: dilated to 3 pixels
    np.testing.assert_array_equal(canny_edges(halves, 2), expected)

    square = np.zeros((10, 12), dtype=np.int32)
    square[3:7, 4:9] = 70000  # third byte: 70000 = 0x011170
    edges = canny_edges(square, 1)
    assert edges[2, 5:8].all() and edges[6, 5:8].all()  # the row above it and its own last row
    assert edges[4:6, 3].all() and edges[4:6, 8].all()  # the column left of it, its last column
    padded = np.pad(square, 1, mode="edge")
    near_change = np.zeros_like(edges)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_change |= padded[1 + dy : 11 + dy, 1 + dx : 13 + dx] != square
    assert not (edges & ~near_change).any()  # only beside a change of region
    for flat in (np.zeros((5, 7), np.int32), np.full((5, 7), 9, np.int32)):
        assert not canny_edges(flat, 1).any()
    with pytest.raises(ValueError, match=r"0\.\.16777215"):
        canny_edges(np.full((3, 3), 2**24, np.int32), 1)


def test_segmentation_map_gives_each_pixel_its_smallest_mask():
    whole = np.ones((6, 8), dtype=bool)
    left, small = np.zeros_like(whole), np.zeros_like(whole)
    left[:, :4] = True
    small[2:4, 2:6] = True  # overlaps left (8 pixels, left has 24)
    twin = np.zeros_like(whole)
    twin[0, 4:6] = twin[1, 4:6] = True  # 4 pixels, as large as...
    other = np.zeros_like(whole)
    other[0:2, 5:7] = True  # ...this one: the later mask takes their shared column
    chunks = [torch.from_numpy(np.stack([small, whole])), torch.from_numpy(np.stack([left]))]
    chunks.append(torch.from_numpy(np.stack([twin, other])))
    labels = segmentation_map(chunks, whole.shape)
    expected = np.full(whole.shape, 2, dtype=np.int32)
    expected[left] = 3
    expected[small] = 1
    expected[twin] = 4
    expected[other] = 5
    np.testing.assert_array_equal(labels, expected)
    assert not segmentation_map([], (3, 4)).any()  # no mask: one region, 0


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from tests.helpers.project import real_sample

    kodak = real_sample("kodak")
    return read_rgb(sorted(kodak.glob("*.png"))[3])[:64, :96].copy()


@pytest.mark.parametrize(
    "settings",
    [
        {**NO_FILTERS, "box_nms_thresh": 1.0},
        {"pred_iou_thresh": "median", "stability_score_thresh": 0.0, "box_nms_thresh": 0.7},
        {**NO_FILTERS, "box_nms_thresh": 1.0, "min_region_area": 50},
    ],
    ids=["all-candidates", "iou-filter-and-nms", "small-region-cleanup"],
)
def test_same_masks_as_sams_automatic_mask_generator(photo, settings):
    with sam_session(SamSpec(TINY, device="cpu", memory_mb=1)) as runner:  # one mask per chunk
        if settings["pred_iou_thresh"] == "median":  # random weights: keep about half
            every = SamAutomaticMaskGenerator(runner.model, 6, box_nms_thresh=1.0, **NO_FILTERS)
            every = every.generate(photo)
            median = float(np.median([r["predicted_iou"] for r in every]))
            settings = {**settings, "pred_iou_thresh": median}
        options = EdgeSettings(
            method="boundary", points_per_side=6, points_per_batch=40, **settings
        )
        ours = torch.cat(list(automatic_masks(runner, photo, options))).numpy()
        reference = SamAutomaticMaskGenerator(
            runner.model,
            points_per_side=6,
            pred_iou_thresh=options.pred_iou_thresh,
            stability_score_thresh=options.stability_score_thresh,
            box_nms_thresh=options.box_nms_thresh,
            min_mask_region_area=options.min_region_area,
        ).generate(photo)
        edges = edge_mask(runner, photo, options)
    theirs = np.stack([r["segmentation"] for r in reference])
    assert len(ours) == len(theirs) > 0
    # the same masks in any order, up to the odd pixel floating-point rounding may flip
    coverage = ours.sum(axis=0, dtype=np.int64), theirs.sum(axis=0, dtype=np.int64)
    assert np.abs(coverage[0] - coverage[1]).sum() <= 1e-4 * theirs.sum()
    expected = mask_edges(torch.from_numpy(theirs), options.edge_width).any(0).numpy()
    assert (edges != expected).mean() <= 1e-3


def same_partition(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels whose region in `a` and region in `b` are matched one to one
    (1.0: the two maps number the same regions differently)."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    used_a, used_b, agreeing = set(), set(), 0
    for k in np.argsort(-counts):  # the largest overlaps claim their regions first
        region_a, region_b = int(pairs[0, k]), int(pairs[1, k])
        if region_a not in used_a and region_b not in used_b:
            used_a.add(region_a)
            used_b.add(region_b)
            agreeing += int(counts[k])
    return agreeing / a.size


def test_canny_edges_of_the_segmentation_map_of_sams_own_masks(photo):
    settings = EdgeSettings(method="canny", points_per_side=6, box_nms_thresh=1.0, **NO_FILTERS)
    with sam_session(TINY_SPEC) as runner:
        ours = segmentation_map(automatic_masks(runner, photo, settings), photo.shape[:2])
        edges = edge_mask(runner, photo, settings)
        reference = SamAutomaticMaskGenerator(runner.model, 6, box_nms_thresh=1.0, **NO_FILTERS)
        theirs = np.stack([r["segmentation"] for r in reference.generate(photo)])
    assert len(np.unique(ours)) > 3  # several regions: a test that can fail
    theirs = segmentation_map([torch.from_numpy(theirs)], photo.shape[:2])
    assert same_partition(ours, theirs) >= 0.999  # SAM's masks, numbered in another order
    assert edges.any()
    np.testing.assert_array_equal(edges, canny_edges(ours, 1))


def test_no_surviving_mask_gives_an_empty_edge_mask(photo):
    for method in ("canny", "boundary"):
        strict = EdgeSettings(method=method, points_per_side=4, pred_iou_thresh=1.0)
        with sam_session(TINY_SPEC) as runner:
            assert not edge_mask(runner, photo, strict).any()
    with pytest.raises(ValueError, match="canny, boundary"):
        EdgeSettings(method="sobel")


def test_edge_store_built_on_dask_loads_sam_once_per_worker(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    settings = EdgeSettings(points_per_side=4, **NO_FILTERS)
    with dask_client(None, n_workers=2) as client:
        client.run(register_tiny_sam)
        out = build_edge_masks(
            val,
            tmp_path / "val.zarr",
            work=tmp_path / "w",
            spec=TINY_SPEC,
            settings=settings,
            images_per_shard=1,
            client=client,
        )
        built = client.run(tiny_sams_built)
    assert sorted(built.values()) == [1, 1]  # 5 shards, one model built in each worker process
    store = MaskStore(out)
    assert store.attrs["kind"] == "edge" and store.attrs["sam"]["model_type"] == TINY
    assert store.attrs["edges"]["points_per_side"] == 4
    with sam_session(TINY_SPEC) as runner:
        for image in val.images:
            expected = edge_mask(runner, read_rgb(val.image_path(image)), settings)
            assert expected.shape == (image["height"], image["width"])
            np.testing.assert_array_equal(store.mask(image["id"]), expected)


def test_killed_edge_build_resumes_without_recomputing_finished_shards(
    sample_prepared, tmp_path, monkeypatch
):
    train = sample_prepared["train"]
    out, work = tmp_path / "train.zarr", tmp_path / "work"
    n = len(train.images)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.sam_models",
            str(train.path),
            str(out),
            str(work),
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    done = work / "done"
    while not (done.is_dir() and len(list(done.iterdir())) >= 2):
        assert child.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = sorted(int(p.name) for p in done.iterdir())
    assert 2 <= len(finished) < n and not out.exists()

    computed = []

    def counting(runner, image, settings):
        computed.append(image.shape)
        return edge_mask(runner, image, settings)

    monkeypatch.setattr(edges_module, "edge_mask", counting)
    settings = EdgeSettings(points_per_side=4, **NO_FILTERS)
    common = {"spec": TINY_SPEC, "settings": settings, "images_per_shard": 1, "client": None}
    build_edge_masks(train, out, work=work, **common)
    assert len(computed) == n - len(finished)
    computed.clear()
    build_edge_masks(train, tmp_path / "ref.zarr", work=tmp_path / "w2", **common)
    assert len(computed) == n
    assert store_files(out) == store_files(tmp_path / "ref.zarr")
