import json
import math

import numpy as np
import pytest
import zarr
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from zarr.storage import LocalStore, LoggingStore

from icmflow.core.errors import InputError, MissingInputError
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, decode
from icmflow.masks.build import build_store
from icmflow.masks.store import IncompleteStoreError, MaskStore, create_store, pack, write_shard
from icmflow.runtime.cluster import dask_client
from tests.helpers.builders import build, prepare_split
from tests.helpers.project import real_sample, store_files


def pycocotools_union(coco: COCO, image_id: int, include_crowd: bool = True) -> np.ndarray:
    info = coco.imgs[image_id]
    union = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        if include_crowd or not ann["iscrowd"]:
            union |= coco.annToMask(ann).astype(bool)
    return union


def assert_identical_to_pycocotools(dataset: PreparedDataset, store: MaskStore, crowd=True):
    coco = COCO(str(dataset.path))
    assert sorted(store.image_ids) == sorted(coco.imgs)
    for image_id in coco.imgs:
        np.testing.assert_array_equal(
            store.mask(image_id), pycocotools_union(coco, image_id, crowd)
        )


def test_sample_masks_equal_pycocotools_union(sample_prepared, sample_masks):
    for split in ("train", "val"):
        assert_identical_to_pycocotools(sample_prepared[split], MaskStore(sample_masks[split]))


def rle_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    blobs = np.zeros((1500, 2000), dtype=bool)  # runs of millions: many characters per count
    blobs[700:, 1200:] = True
    return [
        np.zeros((5, 7), dtype=bool),
        np.ones((5, 7), dtype=bool),
        np.eye(6, 9, dtype=bool),  # first run empty of ones, then shrinking differences
        np.ones((1, 1), dtype=bool),
        blobs,
        *(rng.random((37, 53)) > p for p in (0.05, 0.5, 0.95)),  # differences of either sign
    ]


@pytest.mark.parametrize("mask", rle_cases(), ids=lambda m: f"{m.shape}-{m.mean():.2f}")
def test_rle_decode_equals_pycocotools(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(decode(rle), mask_utils.decode(rle).astype(bool))
    as_json = {**rle, "counts": rle["counts"].decode("ascii")}  # COCO JSON holds str counts
    np.testing.assert_array_equal(decode(as_json), mask)
    with pytest.raises(ValueError, match="do not cover"):
        decode({"size": [mask.shape[0] + 1, mask.shape[1]], "counts": rle["counts"]})


def test_crowd_can_be_excluded(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    out = build(val.data, tmp_path / "m.zarr", crowd=False)
    store = MaskStore(out)
    assert store.attrs["crowd"] == "exclude"
    assert_identical_to_pycocotools(val, store, crowd=False)
    crowd_image = next(a["image_id"] for a in val.data["annotations"] if a["iscrowd"])
    assert (
        MaskStore(out).mask(crowd_image).sum()
        < pycocotools_union(COCO(str(val.path)), crowd_image).sum()
    )


def test_layout_one_chunk_per_image_and_few_shard_files(sample_prepared, sample_masks):
    path = sample_masks["train"]
    n = len(sample_prepared["train"].images)
    array = zarr.open_group(path, mode="r")["mask"]
    _, rows, w = array.shape
    assert rows == math.ceil(max(im["height"] for im in sample_prepared["train"].images) / 8)
    assert array.chunks == (1, rows, w)
    assert array.shards == (4, rows, w)
    shard_files = [p for p in (path / "mask" / "c").rglob("*") if p.is_file()]
    assert 1 <= len(shard_files) <= math.ceil(n / 4)


def test_reading_one_mask_costs_constant_reads(sample_prepared, sample_masks):
    logging_store = LoggingStore(LocalStore(sample_masks["train"], read_only=True))
    store = MaskStore(logging_store)
    for image_id in store.image_ids[:6]:
        logging_store.counter.clear()
        store.mask(image_id)
        reads = sum(v for k, v in logging_store.counter.items() if k.startswith("get"))
        assert reads <= 2  # the shard index and the one chunk


def test_real_coco_voc3_masks_equal_pycocotools(tmp_path):
    root = real_sample("coco-voc3")
    dataset = prepare_split(tmp_path, root / "annotations.json", root, "voc3")
    assert len(dataset.data["annotations"]) == 12
    out = build(dataset.data, tmp_path / "voc3.zarr")
    assert_identical_to_pycocotools(dataset, MaskStore(out))
    coco = COCO(str(dataset.path))
    for ann in coco.loadAnns(coco.getAnnIds()):  # each of the 12 instances on its own, too
        info = coco.imgs[ann["image_id"]]
        ours = mask_utils.decode(annotation_rle(ann, info["height"], info["width"]))
        np.testing.assert_array_equal(ours, coco.annToMask(ann))


def test_polygon_outside_image_leaves_no_store(sample_prepared, tmp_path):
    data = json.loads(json.dumps(sample_prepared["val"].data))
    bad = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))
    bad["segmentation"][0][1] = -400.0
    with pytest.raises(InputError, match=rf"val.json: annotation id={bad['id']} .*outside"):
        build(data, tmp_path / "m.zarr", source="data/val.json")
    assert not (tmp_path / "m.zarr").exists()
    assert not (tmp_path / "m.zarr.work").exists()


class Interrupted(Exception):
    pass


def test_interrupted_build_resumes_without_recomputing(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.random((20 + i, 30)) > 0.5 for i in range(10)]
    shards = [list(range(s, min(s + 3, 10))) for s in range(0, 10, 3)]
    computed = []

    def make(payload, fail_at=None):
        if payload[0] == fail_at:
            raise Interrupted
        computed.append(payload[0])
        return [pack(masks[i]) for i in payload]

    common = dict(
        work=tmp_path / "w",
        images=[{"id": i, "height": m.shape[0], "width": 30} for i, m in enumerate(masks)],
        payloads=shards,
        images_per_shard=3,
        attrs={"kind": "test", "fingerprint": "f1"},
        client=None,
    )
    with pytest.raises(Interrupted):
        build_store(tmp_path / "out.zarr", make_masks=lambda p: make(p, fail_at=6), **common)
    assert computed == [0, 3] and not (tmp_path / "out.zarr").exists()
    computed.clear()
    build_store(tmp_path / "out.zarr", make_masks=make, **common)
    assert computed == [6, 9]
    store = MaskStore(tmp_path / "out.zarr")
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(store.mask(i), mask)
    build_store(tmp_path / "ref.zarr", make_masks=make, **{**common, "work": tmp_path / "w2"})
    assert store_files(tmp_path / "out.zarr") == store_files(tmp_path / "ref.zarr")


def test_incomplete_store_is_refused(tmp_path):
    create_store(
        tmp_path / "s.zarr",
        image_ids=[1],
        heights=[4],
        widths=[4],
        images_per_shard=1,
        attrs={"kind": "object", "fingerprint": "x"},
    )
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        MaskStore(tmp_path / "s.zarr")
    with pytest.raises(MissingInputError, match="run `icmflow masks`"):
        MaskStore(tmp_path / "absent.zarr")


def test_dask_cluster_build_equals_in_process_build(sample_prepared, sample_masks, tmp_path):
    train = sample_prepared["train"]
    with dask_client(None, n_workers=2) as client:
        out = build(
            train.data, tmp_path / "train.zarr", client=client, per_shard=4, source=str(train.path)
        )
    assert store_files(out) == store_files(sample_masks["train"])


def test_shards_are_byte_identical_to_zarrs_own_writer(tmp_path):
    rng = np.random.default_rng(1)
    masks = [rng.random((30 + i, 40)) > 0.7 for i in range(5)] + [np.zeros((31, 40), bool)]
    heights, widths = [m.shape[0] for m in masks], [40] * 6
    common = dict(image_ids=list(range(6)), heights=heights, widths=widths, images_per_shard=4)
    create_store(tmp_path / "ours.zarr", attrs={"fingerprint": "x"}, **common)
    create_store(tmp_path / "zarrs.zarr", attrs={"fingerprint": "x"}, **common)
    write_shard(tmp_path / "ours.zarr", 0, [pack(m) for m in masks[:4]])
    write_shard(tmp_path / "ours.zarr", 1, [pack(m) for m in masks[4:]])
    array = zarr.open_group(tmp_path / "zarrs.zarr", mode="r+")["mask"]
    block = np.zeros(array.shape, dtype=np.uint8)
    for i, mask in enumerate(masks):
        packed = np.packbits(mask, axis=0)
        block[i, : packed.shape[0], : packed.shape[1]] = packed
    array[:] = block
    assert store_files(tmp_path / "ours.zarr") == store_files(tmp_path / "zarrs.zarr")
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "ours.zarr")["mask"][:], block)
    for i in (1, 5):  # unpacking with plain numpy, as the layout docstring says
        unpacked = np.unpackbits(block[i], axis=0, count=heights[i])[:, :40]
        np.testing.assert_array_equal(unpacked.view(bool), masks[i])
