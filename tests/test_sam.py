"""Segment Anything: checkpoint checks, box prompts, and object masks from boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from segment_anything import sam_model_registry

from icmflow.datasets.images import read_rgb
from icmflow.masks.sam_boxes import build_sam_box_masks, clip_to_boxes
from icmflow.masks.store import MaskStore
from icmflow.vision.sam.decoder import decode_prompts
from icmflow.vision.sam.model import (
    CHECKPOINTS_URL,
    OFFICIAL_CHECKPOINTS,
    CheckpointError,
    SamRunner,
    SamSpec,
    build_model,
    check_checkpoint,
    sam_session,
)
from tests.helpers.builders import box_union
from tests.helpers.sam_models import TINY, register_tiny_sam

TINY_SPEC = SamSpec(TINY, device="cpu")


@pytest.fixture(autouse=True)
def tiny_sam():
    register_tiny_sam()


def assert_says_where_to_get_checkpoints(message: str) -> None:
    for name in OFFICIAL_CHECKPOINTS.values():
        assert name in message
    assert CHECKPOINTS_URL in message and "never downloads" in message


def test_missing_checkpoint_names_the_official_files(tmp_path):
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(tmp_path / "sam_vit_b_01ec64.pth", "vit_b")
    assert "no such file" in str(err.value)
    assert_says_where_to_get_checkpoints(str(err.value))


def test_file_that_is_no_checkpoint(tmp_path):
    path = tmp_path / "sam.pth"
    path.write_text("<html>404 Not Found</html>")  # what a failed download often leaves
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as err:
        check_checkpoint(path, "vit_b")
    assert_says_where_to_get_checkpoints(str(err.value))
    torch.save({"model": {"weight": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        check_checkpoint(path, "vit_b")


def test_checkpoint_of_another_model_type(tmp_path):
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, path)
    with pytest.raises(CheckpointError, match="is a vit_l checkpoint") as err:
        check_checkpoint(path, "vit_b")
    assert "set the model type to vit_l, or use sam_vit_b_01ec64.pth" in str(err.value)


def test_checkpoint_with_wrong_tensors_in_the_legacy_format(tmp_path):
    with torch.device("meta"):
        state = sam_model_registry["vit_b"]().state_dict()
    partial = {k: torch.zeros(v.shape) for k, v in state.items() if k.startswith("mask_decoder")}
    partial["extra.weight"] = torch.zeros(2)
    partial["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    path = tmp_path / "old.pth"
    torch.save(partial, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(path, "vit_b")
    message = str(err.value)
    assert "not a SAM vit_b checkpoint" in message
    assert "missing tensors (e.g. image_encoder." in message
    assert "1 unexpected tensors (e.g. extra.weight)" in message
    assert "1 tensors of another shape (e.g. mask_decoder.iou_token.weight)" in message


def test_random_weights_are_reproducible_and_float16_needs_cuda():
    first, second = (build_model(TINY_SPEC, torch.device("cpu")) for _ in range(2))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        SamRunner(first, SamSpec(TINY, device="cpu", precision="float16"))


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", ["points", "boxes"])
def test_decoder_without_image_copies_equals_sams_decoder(prompt, multimask):
    model = build_model(TINY_SPEC, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, 32, 16, 16, generator=generator)
    corners = torch.rand(6, 2, 2, generator=generator).sort(dim=1).values * 256
    points = (corners[:, :1], torch.ones(6, 1, dtype=torch.int)) if prompt == "points" else None
    boxes = corners.reshape(6, 4) if prompt == "boxes" else None
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe()
        expected = model.mask_decoder(embedding, image_pe, sparse, dense, multimask)
        actual = decode_prompts(
            model.mask_decoder, embedding, image_pe, sparse, dense, multimask=multimask
        )
    assert actual[0].shape == expected[0].shape == (6, 3 if multimask else 1, 64, 64)
    for ours, sams in zip(actual, expected, strict=True):
        torch.testing.assert_close(ours, sams, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)


def test_one_mask_per_box_of_the_image_size(image):
    boxes = np.array(
        [[0, 0, 40, 30], [10, 20, 120, 85], [60, 5, 61, 6], [5, 5, 125, 88], [0, 0, 1, 1]]
    )
    with sam_session(TINY_SPEC) as runner:
        chunks = list(runner.box_masks(image, boxes, boxes_per_batch=3))
        assert list(runner.box_masks(image, boxes[:0], boxes_per_batch=3)) == []
    assert [len(c) for c in chunks] == [3, 2]
    masks = torch.cat(chunks)
    assert masks.shape == (len(boxes), 90, 130) and masks.dtype == torch.bool
    with sam_session(SamSpec(TINY, device="cpu", memory_mb=1)) as runner:
        assert runner.chunk(90, 130) == 2  # the memory budget caps the batch
        chunks = list(runner.box_masks(image, boxes, boxes_per_batch=3))
    assert [len(c) for c in chunks] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(chunks), masks)


def test_clip_to_boxes_keeps_pixel_centres_inside_each_box():
    masks = torch.ones(2, 6, 8, dtype=torch.bool)
    clipped = clip_to_boxes(masks, torch.tensor([[1.0, 2.0, 4.0, 5.0], [6.4, 0.0, 7.6, 6.0]]))
    expected = np.zeros((2, 6, 8), dtype=bool)
    expected[0, 2:5, 1:4] = True
    expected[1, :, 6:8] = True  # centres 6.5 and 7.5 lie in [6.4, 7.6)
    np.testing.assert_array_equal(clipped.numpy(), expected)


def test_sam_box_masks_lie_in_their_boxes_and_keep_crowd_regions(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    out = build_sam_box_masks(
        val,
        tmp_path / "val.zarr",
        work=tmp_path / "w",
        spec=TINY_SPEC,
        include_crowd=True,
        boxes_per_batch=3,
        images_per_shard=2,
        client=None,
    )
    store, coco = MaskStore(out), COCO(str(val.path))
    assert store.attrs["kind"] == "object" and store.attrs["from"] == "sam-boxes"
    crowd_image = next(a["image_id"] for a in val.data["annotations"] if a["iscrowd"])
    covered = 0
    for image in val.images:
        mask = store.mask(image["id"])
        assert mask.shape == (image["height"], image["width"])
        boxes = box_union(coco, image["id"], include_crowd=True)
        assert not (mask & ~boxes).any()  # nothing outside the boxes (and crowd regions)
        if not coco.getAnnIds(imgIds=[image["id"]]):
            assert not mask.any()
        covered += mask.sum()
    crowd = next(a for a in coco.loadAnns(coco.getAnnIds(imgIds=[crowd_image])) if a["iscrowd"])
    assert (store.mask(crowd_image) >= coco.annToMask(crowd).astype(bool)).all()
    assert covered > 0
    with sam_session(TINY_SPEC) as runner:  # the store holds SAM's masks, clipped to the boxes
        image = next(
            im for im in val.images if im["id"] != crowd_image and store.mask(im["id"]).any()
        )
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        xywh = np.array([a["bbox"] for a in anns])
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        rgb = read_rgb(val.image_path(image))
        masks = torch.cat(list(runner.box_masks(rgb, boxes, boxes_per_batch=8)))
        expected = clip_to_boxes(masks, torch.as_tensor(boxes)).any(0).numpy()
    np.testing.assert_array_equal(store.mask(image["id"]), expected)
