"""Task losses of frozen recognition models, differentiable with respect to their input images.

A `TaskLoss` wraps a trained detector (an ultralytics YOLO `.pt`, or a torchvision Faster R-CNN
state dict) or segmenter (a torchvision DeepLabV3 state dict) so that a codec can be trained
through it (the auxiliary-loss paper's E(y, ŷ)):

- `targets(x)`: the model's own predictions on images `x` (pseudo-labels, Yamazaki et al.):
  boxes above `conf`, after NMS, as `BoxTargets` (xyxy pixels of `x`, model class indices), or
  the arg-max class map;
- `forward(x_hat, targets)`: the model's training loss on `x_hat` against `targets`, the sum
  of its terms as the library's trainer minimises it (ultralytics': box, cls and DFL, which it
  scales by the batch size, divided by the batch size again; torchvision's: the RPN's and RoI
  heads' means over their samples; DeepLabV3's cross-entropy, plus half its auxiliary head's);
  gradients reach `x_hat` (and no frozen parameter);
- `head(channels, strides)`: a fresh, trainable head of the same family, for the
  auxiliary branch (`icmflow.codecs.aux_branch`) to put on its own features.

The model is frozen: every parameter has `requires_grad=False`, and `train()` never reaches
it, so BatchNorm statistics stay fixed. How each loss is made deterministic:

- YOLO and DeepLabV3: the model stays in eval mode (BatchNorm on running statistics, no
  dropout). For YOLO, ultralytics' `Detect` returns its raw training outputs beside the decoded
  boxes in eval mode, and the model's own criterion (`model.init_criterion()`: task-aligned
  assignment, no sampling) computes the loss from them.
- Faster R-CNN: torchvision returns losses only in train mode, where it also samples anchors
  and proposals at random (`BalancedPositiveNegativeSampler`: `torch.randperm`) and BatchNorm
  would update: BatchNorm layers are put back in eval mode, and the loss runs under a forked
  RNG seeded with `seed`, so the same images give the same sample every step, and the global
  RNG (crop order) is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from icmflow.core.errors import CheckpointError, UnknownNameError
from icmflow.core.registry import Registry
from icmflow.vision.tasks.base import TaskModelSpec


@dataclass
class BoxTargets:
    """One image's boxes (n, 4) as x0, y0, x1, y1 in pixels and model classes (n,)."""

    boxes: torch.Tensor
    classes: torch.Tensor


Targets = list[BoxTargets] | torch.Tensor
"""Per image boxes (detection), an N×H×W class map (semantic segmentation), or N×H×W 0/1
object masks (foreground extraction)."""
TargetKind = Literal["boxes", "class_map", "foreground"]


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right by edge replication to a multiple of `multiple` (boxes stay put)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


class TaskLoss(nn.Module):
    """A frozen recognition model's loss (module doc); `model` is never trained."""

    settings: ClassVar[tuple[str, ...]] = ("conf",)
    """What `configure` may set (e.g. `conf`, the pseudo-labels' score threshold)."""
    target_kind: ClassVar[TargetKind] = "boxes"
    """The ground truth its loss compares with (`icmflow.training.targets`)."""

    def __init__(self, model: nn.Module, conf: float):
        super().__init__()
        self.model, self.conf = _frozen(model), conf

    def configure(self, **settings: Any) -> None:
        """Set some of `settings` (an objective's `task_options`); unknown names are an error."""
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise UnknownNameError(
                f"task_options {unknown}: {type(self).__name__} takes {', '.join(self.settings)}"
            )
        for name, value in settings.items():
            setattr(self, name, value)

    def train(self, mode: bool = True) -> TaskLoss:
        self.training = mode  # the frozen model stays in eval mode (BatchNorm fixed)
        return self

    def targets(self, x: torch.Tensor) -> Targets:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, targets: Targets) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def count(targets: Targets) -> float:
        """Pseudo-labels per image (logged: zero means the model sees nothing): boxes, or the
        fraction of pixels not of class 0 (background)."""
        if isinstance(targets, torch.Tensor):
            return float((targets != 0).float().mean())
        return sum(len(t.boxes) for t in targets) / len(targets)

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def head(self, channels: Sequence[int], strides: Sequence[int]) -> AuxiliaryHead:
        raise NotImplementedError


class AuxiliaryHead(nn.Module):
    """A trainable head: `forward(features, targets, image_size)` is its loss per image."""

    def forward(
        self, features: list[torch.Tensor], targets: Targets, image_size: tuple[int, int]
    ) -> torch.Tensor:
        raise NotImplementedError


# --- ultralytics YOLO ---------------------------------------------------------------------


def _yolo_batch(targets: list[BoxTargets], height: int, width: int) -> dict[str, torch.Tensor]:
    """Targets as ultralytics' loss reads them: image index, class, normalised xywh."""
    boxes = torch.cat([t.boxes for t in targets]).float()
    scale = boxes.new_tensor([width, height, width, height])
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    index = [torch.full((len(t.boxes),), i, device=boxes.device) for i, t in enumerate(targets)]
    return {
        "batch_idx": torch.cat(index).float(),
        "cls": torch.cat([t.classes for t in targets]).float().view(-1, 1),
        "bboxes": xywh / scale,
    }


def _yolo_hyperparameters(saved: Any) -> Any:
    """Ultralytics' default training settings with a checkpoint's own (box, cls, dfl gains)."""
    from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

    saved = vars(saved) if isinstance(saved, IterableSimpleNamespace) else dict(saved or {})
    return IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **saved})


class _YoloCriterionHolder(nn.Module):
    """What ultralytics' `v8DetectionLoss(model)` reads of a model: `args`, `model[-1]`."""

    def __init__(self, detect: nn.Module, args: Any):
        super().__init__()
        self.model = nn.ModuleList([detect])
        self.args = args


class YoloHead(AuxiliaryHead):
    """A YOLOv8 `Detect` head (one2many, task-aligned loss) on features at `strides`."""

    def __init__(self, num_classes: int, channels: Sequence[int], strides: Sequence[int], args):
        super().__init__()
        from ultralytics.nn.modules.head import Detect

        detect = Detect(nc=num_classes, ch=tuple(channels))
        detect.stride = torch.tensor([float(s) for s in strides])
        detect.bias_init()
        self.holder = _YoloCriterionHolder(detect, args)
        self._criterion: Any = None

    def forward(
        self, features: list[torch.Tensor], targets: list[BoxTargets], image_size: tuple[int, int]
    ) -> torch.Tensor:
        from ultralytics.utils.loss import v8DetectionLoss

        detect = self.holder.model[0]
        preds = detect.forward_head(features, **detect.one2many)
        device = features[0].device
        if self._criterion is None or self._criterion.device != device:
            self._criterion = v8DetectionLoss(self.holder)
        loss, _ = self._criterion(preds, _yolo_batch(targets, *image_size))
        return loss.sum() / features[0].shape[0]


class YoloTaskLoss(TaskLoss):
    """An ultralytics detection model (`.pt`), in eval mode (module doc)."""

    settings = ("conf", "iou", "max_det")

    def __init__(self, model: nn.Module, conf: float = 0.25, iou: float = 0.7, max_det: int = 100):
        super().__init__(model, conf)
        self.iou, self.max_det = iou, max_det
        model.args = _yolo_hyperparameters(getattr(model, "args", None))
        self.stride = int(max(model.stride))

    @property
    def num_classes(self) -> int:
        return int(self.model.model[-1].nc)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[BoxTargets]:
        from ultralytics.utils import nms

        decoded, _ = self.model(_pad_to(x, self.stride))
        detections = nms.non_max_suppression(
            decoded,
            self.conf,
            self.iou,
            max_det=self.max_det,
            end2end=getattr(self.model, "end2end", False),
        )
        return [BoxTargets(d[:, :4].detach(), d[:, 5].long()) for d in detections]

    def forward(self, x: torch.Tensor, targets: list[BoxTargets]) -> torch.Tensor:
        padded = _pad_to(x, self.stride)
        criterion = getattr(self.model, "criterion", None)
        if criterion is None or getattr(criterion, "device", None) != padded.device:
            self.model.criterion = self.model.init_criterion()
        loss, _ = self.model.loss(_yolo_batch(targets, *padded.shape[-2:]), self.model(padded))
        return loss.sum() / x.shape[0]

    def head(self, channels: Sequence[int], strides: Sequence[int]) -> YoloHead:
        return YoloHead(self.num_classes, channels, strides, self.model.args)

    @classmethod
    def load(cls, spec: TaskModelSpec, **options: Any) -> YoloTaskLoss:
        from icmflow.vision.tasks.ultralytics_backend import _open_yolo

        weights = Path(spec.weights)
        if spec.kind != "detection" or weights.suffix not in (".pt", ".yaml", ".yml"):
            raise CheckpointError(
                f"{weights}: a task loss needs a PyTorch detection model (.pt, or a .yaml with "
                f"random weights), not a {spec.kind} model in {weights.suffix or 'no'} format: "
                "exports (.tflite, .onnx) cannot backpropagate"
            )
        return cls(_open_yolo(weights, spec.kind).model, **options)


# --- torchvision Faster R-CNN --------------------------------------------------------------


def rcnn_targets(targets: list[BoxTargets]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t.boxes.float(), "labels": t.classes.long()} for t in targets]


def _rcnn_losses(rcnn: nn.Module, call, seed: int, device: torch.device) -> torch.Tensor:
    """`call()` (returning torchvision's loss dict) in train mode, BatchNorm fixed, under a
    forked RNG seeded with `seed`: the same draws every call, the global RNG untouched."""
    was_training = rcnn.training
    rcnn.train()
    for module in rcnn.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            losses = call()
    finally:
        rcnn.train(was_training)
    return sum(losses.values())


class RcnnHead(AuxiliaryHead):
    """A Faster R-CNN head (FPN, RPN, RoI heads) of torchvision on the branch's features."""

    def __init__(self, num_classes: int, channels: Sequence[int], strides: Sequence[int], seed):
        super().__init__()
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

        width, hidden = 64, 256  # lightweight: torchvision's default heads are 256 and 1024
        self.fpn = FeaturePyramidNetwork(list(channels), width)
        names = [str(i) for i in range(len(channels))]
        sizes = tuple((4 * s,) for s in strides)
        holder = nn.Module()
        holder.out_channels = width
        rcnn = FasterRCNN(
            holder,
            num_classes=None,  # given by box_predictor
            rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)),
            box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
            box_head=TwoMLPHead(width * 7 * 7, hidden),
            box_predictor=FastRCNNPredictor(hidden, num_classes),
        )
        self.rpn, self.roi_heads, self.seed = rcnn.rpn, rcnn.roi_heads, seed

    def forward(
        self, features: list[torch.Tensor], targets: list[BoxTargets], image_size: tuple[int, int]
    ) -> torch.Tensor:
        from collections import OrderedDict

        from torchvision.models.detection.image_list import ImageList

        maps = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        n = features[0].shape[0]
        images = ImageList(features[0].new_zeros(n, 3, *image_size), [image_size] * n)
        boxes = rcnn_targets(targets)

        def call() -> dict[str, torch.Tensor]:
            proposals, rpn_losses = self.rpn(images, maps, boxes)
            _, head_losses = self.roi_heads(maps, proposals, images.image_sizes, boxes)
            return {**rpn_losses, **head_losses}

        return _rcnn_losses(self, call, self.seed, features[0].device)


class RcnnTaskLoss(TaskLoss):
    """A torchvision Faster R-CNN (module doc)."""

    settings = ("conf", "seed")

    def __init__(self, model: nn.Module, conf: float = 0.5, seed: int = 0):
        super().__init__(model, conf)
        self.seed = seed

    @property
    def num_classes(self) -> int:
        return int(self.model.roi_heads.box_predictor.cls_score.out_features)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[BoxTargets]:
        outputs = self.model(list(x))
        return [
            BoxTargets(o["boxes"][o["scores"] >= self.conf], o["labels"][o["scores"] >= self.conf])
            for o in outputs
        ]

    def forward(self, x: torch.Tensor, targets: list[BoxTargets]) -> torch.Tensor:
        def call() -> dict[str, torch.Tensor]:
            return self.model(list(x), rcnn_targets(targets))

        return _rcnn_losses(self.model, call, self.seed, x.device)

    def head(self, channels: Sequence[int], strides: Sequence[int]) -> RcnnHead:
        return RcnnHead(self.num_classes, channels, strides, self.seed)

    @classmethod
    def load(cls, spec: TaskModelSpec, **options: Any) -> RcnnTaskLoss:
        from icmflow.vision.tasks.torchvision_backend import _arch, load_model

        name = spec.options.get("arch", "")
        if spec.kind != "detection" or not str(name).startswith("fasterrcnn"):
            raise CheckpointError(
                f"{spec.weights}: a torchvision task loss needs a Faster R-CNN (options.arch "
                f"fasterrcnn_*), not {name!r} ({spec.kind})"
            )
        _arch(spec)
        return cls(load_model(spec, Path(spec.weights)), **options)


# --- torchvision DeepLabV3 ------------------------------------------------------------------


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    from icmflow.vision.tasks.torchvision_backend import IMAGENET_MEAN, IMAGENET_STD

    mean, std = x.new_tensor(IMAGENET_MEAN), x.new_tensor(IMAGENET_STD)
    return (x - mean[:, None, None]) / std[:, None, None]


def _segmentation_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the class logits at the targets' size, plus half the auxiliary head's
    (as the torchvision backend trains DeepLabV3); pixels of class `IGNORE` (crowd regions of
    ground-truth maps) are left out."""
    from icmflow.vision.tasks.torchvision_backend import IGNORE

    loss = torch.zeros((), device=targets.device)
    for key, weight in (("out", 1.0), ("aux", 0.5)):
        if key in outputs:
            logits = F.interpolate(
                outputs[key], size=targets.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = loss + weight * F.cross_entropy(logits, targets, ignore_index=IGNORE)
    return loss


class SegmentationHead(AuxiliaryHead):
    """conv3–conv5 reduced to `width` channels, summed at stride 8, 3×3 conv, 1×1 class logits."""

    def __init__(self, num_classes: int, channels: Sequence[int], width: int = 64):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.classify = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Class logits at the finest feature map's size, from all feature maps summed."""
        size = features[0].shape[-2:]
        summed = sum(
            F.interpolate(reduce(f), size=size, mode="bilinear", align_corners=False)
            for reduce, f in zip(self.reduce, features, strict=True)
        )
        return self.classify(summed)

    def forward(
        self, features: list[torch.Tensor], targets: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        return _segmentation_loss({"out": self.logits(features)}, targets)


class SegmentationTaskLoss(TaskLoss):
    """A torchvision DeepLabV3, in eval mode (BatchNorm fixed, no dropout): cross-entropy of its
    logits on x̂ against its own class map on x (pixels of class 0 are background)."""

    settings = ()
    target_kind = "class_map"

    def __init__(self, model: nn.Module):
        super().__init__(model, conf=0.0)

    @property
    def num_classes(self) -> int:
        return int(self.model.classifier[-1].out_channels)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(_imagenet(x))["out"]
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _segmentation_loss(self.model(_imagenet(x)), targets)

    def head(self, channels: Sequence[int], strides: Sequence[int]) -> SegmentationHead:
        return SegmentationHead(self.num_classes, channels)


class ForegroundHead(SegmentationHead):
    """`SegmentationHead` with one output, trained with the Dice loss of its sigmoid."""

    def __init__(self, channels: Sequence[int], width: int = 64):
        super().__init__(1, channels, width)

    def forward(
        self, features: list[torch.Tensor], targets: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        return _foreground_loss({"out": self.logits(features)}, targets)


def _foreground_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The Dice loss of the sigmoid at the targets' size, plus half the auxiliary head's."""
    from icmflow.vision.tasks.torchvision_backend import dice_loss

    loss = torch.zeros((), device=targets.device)
    for key, weight in (("out", 1.0), ("aux", 0.5)):
        if key in outputs:
            logits = F.interpolate(
                outputs[key], size=targets.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = loss + weight * dice_loss(logits[:, 0].sigmoid(), targets)
    return loss


class ForegroundTaskLoss(SegmentationTaskLoss):
    """A torchvision DeepLabV3 with one sigmoid output (foreground extraction, paper 004), in
    eval mode: the Dice loss of its foreground probabilities on x̂ against its own mask on x
    (probability above `conf`, 0.5 by default) or the object mask."""

    settings = ("conf",)
    target_kind = "foreground"

    def __init__(self, model: nn.Module, conf: float = 0.5):
        super().__init__(model)
        self.conf = conf

    @property
    def num_classes(self) -> int:
        return 1

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(_imagenet(x))["out"]
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (logits[:, 0].sigmoid() > self.conf).long()

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _foreground_loss(self.model(_imagenet(x)), targets)

    def head(self, channels: Sequence[int], strides: Sequence[int]) -> ForegroundHead:
        return ForegroundHead(channels)


def _torchvision(spec: TaskModelSpec, **options: Any) -> TaskLoss:
    if spec.kind in ("semantic_segmentation", "foreground"):
        from icmflow.vision.tasks.torchvision_backend import load_model

        loss = ForegroundTaskLoss if spec.kind == "foreground" else SegmentationTaskLoss
        return loss(load_model(spec, Path(spec.weights)), **options)
    return RcnnTaskLoss.load(spec, **options)


TASK_LOSSES: Registry[Any] = Registry("task-loss backend")
"""Task backend name -> loader `(spec, **options) -> TaskLoss`."""
TASK_LOSSES.register("ultralytics")(YoloTaskLoss.load)
TASK_LOSSES.register("torchvision")(_torchvision)


def load_task_loss(backend: str, spec: TaskModelSpec, **options: Any) -> TaskLoss:
    """The frozen task loss of the model in `spec.weights` (a `CheckpointError` if unfit)."""
    return TASK_LOSSES[backend](spec, **options)
