"""Ground-truth targets of training crops (`targets: ground-truth`): boxes and class maps cropped
and padded as the image is, and task-driven objectives trained on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.tasks.scoring import IGNORE_INDEX, semantic_ground_truth
from icmflow.training.data import Seeded, TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.targets import TARGETS, GroundTruth, crop_boxes, mirror_boxes
from icmflow.training.trainer import TrainSettings, train_codec
from icmflow.vision.tasks.differentiable import BoxTargets, RcnnTaskLoss, load_task_loss
from tests.helpers.task_models import codec, frozen_state, random_rcnn, task_spec

CLASS_OF = {1: 1, 2: 2, 3: 3}


@pytest.fixture(scope="module")
def rcnn(tmp_path_factory) -> RcnnTaskLoss:
    return random_rcnn(tmp_path_factory.mktemp("rcnn"))


def test_crops_keep_boxes_mostly_inside_and_clip_them():
    boxes = np.array(
        [
            [10, 10, 30, 30, 1],  # inside
            [50, 10, 80, 30, 2],  # 14 of 30 columns inside: kept, clipped at 64
            [60, 40, 100, 60, 3],  # 4 of 40 columns inside: dropped
            [63, 0, 70, 5, 1],  # a 1-pixel sliver: dropped
        ],
        dtype=np.float32,
    )
    kept = crop_boxes(boxes, top=0, left=0, size=64)
    assert kept.tolist() == [[10, 10, 30, 30, 1], [50, 10, 64, 30, 2]]
    shifted = crop_boxes(boxes, top=5, left=40, size=64)
    assert shifted[:, 4].tolist() == [2, 3]  # the first box left the crop; the third is in
    assert shifted[0].tolist() == [10, 5, 40, 25, 2]


def test_boxes_get_their_mirror_images_in_the_padding():
    boxes = np.array([[30, 4, 40, 10, 1]], dtype=np.float32)  # touches the right edge of 40
    mirrored = mirror_boxes(boxes, height=64, width=40, size=64)
    assert mirrored.tolist() == [[30, 4, 40, 10, 1], [40, 4, 50, 10, 1]]
    both = mirror_boxes(boxes, height=32, width=40, size=64)
    assert len(both) == 4 and [40, 54, 50, 60, 1] in both.tolist()


@pytest.mark.parametrize("kind", ["boxes", "class_map"])
def test_crops_carry_the_annotations_they_show(sample_prepared, kind):
    dataset = sample_prepared["train"]
    crops = Seeded(TrainingCrops(dataset, {}, 96, targets=GroundTruth(kind, CLASS_OF)))
    found = 0
    for index, image in enumerate(dataset.images):
        sample = crops[(index, 7)]
        target = sample[TARGETS]
        again = crops[(index, 7)]  # the same seed: the same crop and targets
        assert torch.equal(sample["x"], again["x"]) and torch.equal(target, again[TARGETS])
        labels = semantic_ground_truth(dataset, image)
        if kind == "class_map":
            assert target.shape == (96, 96) and target.dtype == torch.int64
            values = set(target.unique().tolist())
            assert values <= {0, 1, 2, 3, IGNORE_INDEX}
            found += int((target > 0).sum())
            continue
        assert target.shape[1] == 5 and (target[:, :4] >= 0).all() and (target[:, :4] <= 96).all()
        found += len(target)
        for x0, y0, x1, y1, cls in target.tolist():  # each box covers pixels of its class
            window = sample_window(labels, crops.data, index, 7)
            inside = window[int(y0) : int(y1), int(x0) : int(x1)]
            assert (inside == cls).any()
    assert found > 0, "no crop showed an object: the test checked nothing"


def sample_window(labels: np.ndarray, crops: TrainingCrops, index: int, seed: int) -> np.ndarray:
    """The class map of the image under crop `(index, seed)`: the crop's draws, replayed."""
    from icmflow.training.data import pad_to

    padded = pad_to(labels, crops.patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        rgb, _ = crops._load(index)
        top = int(torch.randint(0, rgb.shape[0] - crops.patch_size + 1, ()))
        left = int(torch.randint(0, rgb.shape[1] - crops.patch_size + 1, ()))
    return padded[top : top + crops.patch_size, left : left + crops.patch_size]


def test_box_batches_collate_to_a_list(sample_prepared):
    crops = TrainingCrops(sample_prepared["train"], {}, 64, targets=GroundTruth("boxes", CLASS_OF))
    batch = crops.collate([Seeded(crops)[(i, 1)] for i in range(3)])
    assert batch["x"].shape == (3, 3, 64, 64)
    assert isinstance(batch[TARGETS], list) and len(batch[TARGETS]) == 3


def test_task_loss_trains_on_ground_truth_boxes(rcnn, sample_prepared, tmp_path):
    found = OBJECTIVES["task-loss"](lmbda=1.0, task=rcnn, targets="ground-truth")
    assert found.ground_truth == "boxes"
    two_classes = GroundTruth("boxes", {1: 1, 2: 2})  # the fixture's R-CNN: 2 classes + background
    crops = TrainingCrops(sample_prepared["train"], {}, 64, targets=two_classes)
    batch = crops.collate([Seeded(crops)[(i, 3)] for i in range(2)])
    targets = found.targets_of(batch)
    assert all(isinstance(t, BoxTargets) for t in targets)
    assert [len(t.boxes) for t in targets] == [len(b) for b in batch[TARGETS]]
    model, before = codec(), frozen_state(rcnn)
    found.bind(model)
    settings = TrainSettings(steps=2, batch_size=2, lr=1e-3, aux_lr=1e-3)
    result = train_codec(model, found, crops, settings, log_path=tmp_path / "log.csv")
    assert np.isfinite(result.last["task_loss"]) and result.last["targets"] > 0
    assert all(torch.equal(before[k], v) for k, v in rcnn.model.state_dict().items())


def test_segmentation_loss_ignores_crowd_pixels(tmp_path):
    task = load_task_loss("torchvision", task_spec("semantic_segmentation", tmp_path))
    x = torch.rand(1, 3, 64, 64)
    labels = torch.randint(0, 4, (1, 64, 64))
    crowd = labels.clone()
    crowd[:, :32] = IGNORE_INDEX
    only_lower = task(x, crowd)
    weighted = labels.clone()
    weighted[:, :32] = (labels[:, :32] + 1) % 4  # other classes where the crowd region is
    assert torch.isfinite(only_lower)
    assert not torch.isclose(task(x, weighted), task(x, labels))  # the region counts ...
    crowd_other = weighted.clone()
    crowd_other[:, :32] = IGNORE_INDEX
    assert torch.equal(task(x, crowd_other), only_lower)  # ... unless it is ignored


def test_cityscapes_layout_crops_carry_its_class_maps(sample_layouts, tmp_path):
    """The sample in the Cityscapes layout, prepared: class-map targets are its label maps."""
    source = sample_layouts / "cityscapes"
    images = source / "leftImg8bit" / "train"
    raw = FORMATS["cityscapes"].read(
        source / "gtFine" / "train", images, ProblemLog("raise"), ignored_regions="crowd"
    )
    prepared = normalise(raw, images, ProblemLog("raise"), workers=1)
    write_prepared(tmp_path / "train.json", prepared, image_root=images, final_dir=tmp_path)
    dataset = PreparedDataset.load(tmp_path / "train.json")
    class_of = {c["id"]: i + 1 for i, c in enumerate(dataset.data["categories"])}
    crops = TrainingCrops(dataset, {}, 128, targets=GroundTruth("class_map", class_of))
    lookup = {0: 0, IGNORE_INDEX: IGNORE_INDEX, **class_of}
    shown = 0
    for index, image in enumerate(dataset.images):
        target = Seeded(crops)[(index, 5)][TARGETS].numpy()
        labels = sample_window(semantic_ground_truth(dataset, image), crops, index, 5)
        np.testing.assert_array_equal(target, np.vectorize(lookup.get)(labels))
        shown += int(((target > 0) & (target != IGNORE_INDEX)).sum())
    assert shown > 0
