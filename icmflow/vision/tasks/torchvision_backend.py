"""Torchvision detectors and segmenters (`backend: torchvision`).

Options: `arch` (one of `ARCHS`), `num_classes` (background included; torchvision's default
otherwise), `class_names` ({index: name}), `category_to_class` ({category id: class}; default:
the category id; categories it leaves out are not trained on), `conf` and `max_det` (R-CNNs'
score threshold and detections per image), `max_size` (R-CNNs' longer-side limit). Models are
always built with random weights (`weights=None, weights_backbone=None`) and then load
`spec.weights`: a state dict, or a checkpoint dict holding one under `model` or `state_dict`.

R-CNNs resize the shorter side to `input_size` themselves; DeepLabV3 gets the image with its
shorter side resized to `input_size`, ImageNet-normalised as torchvision's weights expect, and
returns the argmax class map at the original size. A `foreground` model (paper 004's foreground
extraction) is a DeepLabV3 arch with one output channel (`num_classes` 1): the sigmoid of its
logit at the original size is the foreground probability of each pixel.

Training is a plain SGD loop: the R-CNNs' loss dict summed, with BatchNorm frozen when
fine-tuning from `initial` (as torchvision's builders freeze it under pretrained weights);
DeepLabV3 cross-entropy on square crops (crowd regions ignored) of at least 2 images a batch
(BatchNorm), plus half the auxiliary loss when the model has that head; a foreground model the
same with the Dice loss of its sigmoid against the object mask (`dice_loss`; the union of the
image's annotated objects, crowds included).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.models import detection, segmentation

from icmflow.core.errors import CheckpointError, IcmflowError, InputError
from icmflow.core.files import write_bytes
from icmflow.core.registry import Registry
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, decode
from icmflow.tasks.classes import FOREGROUND
from icmflow.tasks.scoring import foreground_ground_truth
from icmflow.vision.tasks.base import (
    TASK_BACKENDS,
    Detections,
    Prediction,
    TaskBackend,
    TaskKind,
    TaskModel,
    TaskModelSpec,
    TrainingData,
    TrainSettings,
)
from icmflow.vision.tasks.offline import TORCHVISION_OFFLINE

IGNORE = 255
"""Class-map value DeepLabV3's loss ignores (crowd regions)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Arch:
    kind: TaskKind
    build: Callable[..., nn.Module]
    num_classes: int
    """Torchvision's default (COCO's 91 ids for R-CNNs, VOC's 21 classes for DeepLabV3)."""


def deeplabv3_resnet18(
    *, weights: None, weights_backbone: None, num_classes: int, aux_loss: bool = False
) -> nn.Module:
    """DeepLabV3 on ResNet-18 (output stride 32: its basic blocks take no dilation), built from
    torchvision's parts: a small segmenter for tests, demos and CPUs."""
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    backbone = IntermediateLayerGetter(resnet18(weights=weights_backbone), layers)
    aux = FCNHead(256, num_classes) if aux_loss else None
    return DeepLabV3(backbone, DeepLabHead(512, num_classes), aux)


def fasterrcnn_resnet18_fpn(
    *, weights: None, weights_backbone: None, num_classes: int, **kwargs
) -> nn.Module:
    """Faster R-CNN on a ResNet-18 FPN, built from torchvision's parts (as `deeplabv3_resnet18`)."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    backbone = _resnet_fpn_extractor(resnet18(weights=weights_backbone), trainable_layers=5)
    return detection.FasterRCNN(backbone, num_classes=num_classes, **kwargs)


ARCHS: Registry[Arch] = Registry("torchvision arch")
for _name, _entry in {
    "fasterrcnn_resnet18_fpn": Arch("detection", fasterrcnn_resnet18_fpn, 91),
    "deeplabv3_resnet18": Arch("semantic_segmentation", deeplabv3_resnet18, 21),
    "fasterrcnn_resnet50_fpn": Arch("detection", detection.fasterrcnn_resnet50_fpn, 91),
    "fasterrcnn_resnet50_fpn_v2": Arch("detection", detection.fasterrcnn_resnet50_fpn_v2, 91),
    "fasterrcnn_mobilenet_v3_large_fpn": Arch(
        "detection", detection.fasterrcnn_mobilenet_v3_large_fpn, 91
    ),
    "maskrcnn_resnet50_fpn": Arch("instance_segmentation", detection.maskrcnn_resnet50_fpn, 91),
    "maskrcnn_resnet50_fpn_v2": Arch(
        "instance_segmentation", detection.maskrcnn_resnet50_fpn_v2, 91
    ),
    "deeplabv3_resnet50": Arch("semantic_segmentation", segmentation.deeplabv3_resnet50, 21),
    "deeplabv3_resnet101": Arch("semantic_segmentation", segmentation.deeplabv3_resnet101, 21),
    "deeplabv3_mobilenet_v3_large": Arch(
        "semantic_segmentation", segmentation.deeplabv3_mobilenet_v3_large, 21
    ),
}.items():
    ARCHS.register(_name)(_entry)


def _arch(spec: TaskModelSpec) -> Arch:
    name = spec.options.get("arch")
    arch = ARCHS[str(name)]
    kind = "semantic_segmentation" if spec.kind == "foreground" else spec.kind
    if arch.kind != kind:
        raise CheckpointError(f"torchvision arch {name!r} is a {arch.kind} model, not {spec.kind}")
    return arch


def num_classes(spec: TaskModelSpec) -> int:
    """Output classes (background included); a foreground model has one sigmoid output."""
    if spec.kind == "foreground":
        if spec.options.get("num_classes", 1) != 1:
            raise CheckpointError(
                f"options.num_classes {spec.options['num_classes']}: a foreground model has "
                "one output (the sigmoid's logit): set 1 or leave it out"
            )
        return 1
    return int(spec.options.get("num_classes", _arch(spec).num_classes))


def dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0):
    """The Dice loss of foreground probabilities (N×H×W) against 0/1 masks, averaged over the
    images: 1 − (2·Σ p·g + s) / (Σ p + Σ g + s) each, `smooth` s keeping an empty mask's
    loss finite (0 when nothing is predicted on it)."""
    p, g = probabilities.flatten(1), targets.flatten(1).to(probabilities.dtype)
    overlap = (p * g).sum(1)
    return (1 - (2 * overlap + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


def build(spec: TaskModelSpec, *, aux_loss: bool = False) -> nn.Module:
    """The model of `spec.options["arch"]` with random weights; nothing is downloaded."""
    arch, options = _arch(spec), spec.options
    kwargs: dict = {"num_classes": num_classes(spec)}
    if arch.kind == "semantic_segmentation":  # and foreground models
        kwargs["aux_loss"] = aux_loss
    else:
        kwargs["min_size"] = spec.input_size
        kwargs["max_size"] = options.get("max_size", math.ceil(spec.input_size * 1333 / 800))
        if "conf" in options:
            kwargs["box_score_thresh"] = options["conf"]
        if "max_det" in options:
            kwargs["box_detections_per_img"] = options["max_det"]
    return arch.build(**TORCHVISION_OFFLINE, **kwargs)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (bare, or under a checkpoint's `model` / `state_dict`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; train it first or fix the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or torch errors: not a readable state dict
        raise CheckpointError(f"{path}: not a readable torch state dict ({err})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not (isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())):
        raise CheckpointError(f"{path}: holds no state dict (tensors by parameter name)")
    return state


def load_model(spec: TaskModelSpec, path: Path) -> nn.Module:
    """`build` and load the state dict in `path`; `CheckpointError` when it does not fit."""
    state = read_state(path)
    model = build(spec, aux_loss=any(k.startswith("aux_classifier.") for k in state))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: does not fit torchvision {spec.options['arch']} with "
            f"{num_classes(spec)} classes (check `arch` and `num_classes`): {str(err)[:500]}"
        ) from None
    return model


def _tensor(rgb: np.ndarray, device: str) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float() / 255


def _deeplab_input(image: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 3, h, w): shorter side resized to `side`, ImageNet-normalised."""
    height, width = image.shape[1:]
    scale = side / min(height, width)
    size = (round(height * scale), round(width * scale))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (resized - mean) / std


class TorchvisionModel(TaskModel):
    def __init__(self, model: nn.Module, spec: TaskModelSpec):
        self.model, self.kind, self.spec = model.to(spec.device).eval(), spec.kind, spec
        names = spec.options.get("class_names")
        self.class_names = (
            {int(k): str(v) for k, v in names.items()}
            if names
            else {i: str(i) for i in range(num_classes(spec))}
        )
        if spec.kind == "foreground":
            self.class_names = {FOREGROUND: "foreground"}

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        tensors = [_tensor(image, self.spec.device) for image in images]
        if self.kind == "semantic_segmentation":
            return [self._logits(t)[0].argmax(0).cpu().numpy().astype(np.int64) for t in tensors]
        if self.kind == "foreground":
            return [self._logits(t)[0, 0].sigmoid().cpu().numpy() for t in tensors]
        return [self._detections(output) for output in self.model(tensors)]

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        """DeepLabV3's logits (1×C×H×W) at the image's own size."""
        logits = self.model(_deeplab_input(image, self.spec.input_size))["out"]
        return F.interpolate(logits, size=image.shape[1:], mode="bilinear", align_corners=False)

    def _detections(self, output: dict[str, torch.Tensor]) -> Detections:
        detections = Detections(
            boxes=output["boxes"].cpu().numpy().astype(np.float64),
            scores=output["scores"].cpu().numpy().astype(np.float64),
            classes=output["labels"].cpu().numpy().astype(np.int64),
        )
        if self.kind == "instance_segmentation":
            binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            detections.masks = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        return detections


def _class_of(spec: TaskModelSpec, dataset: PreparedDataset) -> dict[int, int]:
    """Category id -> model class, checked against the model's classes."""
    mapping = spec.options.get("category_to_class")
    classes = (
        {int(k): int(v) for k, v in mapping.items()}
        if mapping
        else {c["id"]: c["id"] for c in dataset.data["categories"]}
    )
    n = num_classes(spec)
    for category, cls in classes.items():
        if not 0 < cls < n:
            raise InputError(
                dataset.path,
                f"category {category}",
                f"model class {cls} is outside 1..{n - 1} (0 is background); "
                "set `num_classes` or `category_to_class` in the task's options",
            )
    return classes


def _rcnn_target(
    dataset: PreparedDataset, image: dict, classes: dict[int, int], masks: bool, device: str
) -> dict[str, torch.Tensor]:
    """Boxes (xyxy), labels and (Mask R-CNN) masks of the image's non-crowd annotations."""
    anns = [
        a
        for a in dataset.annotations[image["id"]]
        if not a["iscrowd"] and a["category_id"] in classes and min(a["bbox"][2:]) > 0
    ]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    target = {
        "boxes": boxes,
        "labels": torch.tensor([classes[a["category_id"]] for a in anns], dtype=torch.int64),
    }
    if masks:
        h, w = image["height"], image["width"]
        stack = [decode(annotation_rle(a, h, w)) for a in anns]
        target["masks"] = torch.from_numpy(np.array(stack, dtype=np.uint8).reshape(-1, h, w))
    return {k: v.to(device) for k, v in target.items()}


def _class_map_target(dataset: PreparedDataset, image: dict, classes: dict[int, int]) -> np.ndarray:
    """(H, W) class map: background 0, annotations painted in order, crowd regions ignored."""
    h, w = image["height"], image["width"]
    target = np.zeros((h, w), dtype=np.int64)
    for ann in dataset.annotations[image["id"]]:
        if ann["iscrowd"] or ann["category_id"] in classes:
            cls = IGNORE if ann["iscrowd"] else classes[ann["category_id"]]
            target[decode(annotation_rle(ann, h, w))] = cls
    return target


def _crop(
    image: torch.Tensor, target: np.ndarray, side: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `side`×`side` crop of the image resized as for prediction, and its class map."""
    x = _deeplab_input(image, side)[0]
    y = torch.from_numpy(target).to(image.device)[None, None].float()
    y = F.interpolate(y, size=x.shape[1:], mode="nearest")[0, 0].long()
    top, left = (int(torch.randint(n - side + 1, (1,), generator=generator)) for n in x.shape[1:])
    return x[:, top : top + side, left : left + side], y[top : top + side, left : left + side]


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
            module.requires_grad_(False)


class TorchvisionBackend(TaskBackend):
    kinds = frozenset(arch.kind for _, arch in ARCHS.items()) | {"foreground"}

    def load(self, spec: TaskModelSpec) -> TorchvisionModel:
        return TorchvisionModel(load_model(spec, Path(spec.weights)), spec)

    def train(
        self, spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path
    ) -> Path:
        if settings.options:
            raise IcmflowError(
                f"training options {sorted(settings.options)}: the torchvision loop takes none "
                "(epochs, batch_size, lr and seed only); remove them from the params file"
            )
        semantic = spec.kind in ("semantic_segmentation", "foreground")
        if semantic and settings.batch_size < 2:
            raise IcmflowError("batch_size: DeepLabV3 trains on 2 or more images a batch")
        torch.manual_seed(settings.seed)
        model = load_model(spec, Path(settings.initial)) if settings.initial else build(spec)
        model.to(spec.device).train()
        if settings.initial and not semantic:
            _freeze_batchnorm(model)
        dataset = PreparedDataset.load(data.coco)
        classes = {} if spec.kind == "foreground" else _class_of(spec, dataset)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            trainable,
            lr=0.01 if settings.lr is None else settings.lr,
            momentum=0.9,
            weight_decay=1e-4,
        )
        generator = torch.Generator().manual_seed(settings.seed)
        for _ in range(settings.epochs):
            order = torch.randperm(len(dataset.images), generator=generator).tolist()
            for start in range(0, len(order), settings.batch_size):
                batch = [dataset.images[i] for i in order[start : start + settings.batch_size]]
                if semantic and len(batch) < 2:  # BatchNorm needs two: skip a last single image
                    continue
                loss = self._loss(model, spec, dataset, batch, classes, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        weights = Path(out) / "weights.pt"
        write_bytes(weights, buffer.getvalue())
        return weights

    @staticmethod
    def _loss(
        model: nn.Module,
        spec: TaskModelSpec,
        dataset: PreparedDataset,
        batch: list[dict],
        classes: dict[int, int],
        generator: torch.Generator,
    ) -> torch.Tensor:
        images = [_tensor(read_rgb(dataset.image_path(image)), spec.device) for image in batch]
        if spec.kind in ("detection", "instance_segmentation"):
            masks = spec.kind == "instance_segmentation"
            targets = [_rcnn_target(dataset, i, classes, masks, spec.device) for i in batch]
            return sum(model(images, targets).values())
        foreground = spec.kind == "foreground"
        crops = [
            _crop(
                x,
                foreground_ground_truth(dataset, image)
                if foreground
                else _class_map_target(dataset, image, classes),
                spec.input_size,
                generator,
            )
            for x, image in zip(images, batch, strict=True)
        ]
        x, y = torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops])
        outputs = model(x)
        loss = torch.zeros((), device=x.device)
        for key, weight in (("out", 1.0), ("aux", 0.5)):
            if key in outputs:
                logits = outputs[key]
                term = (
                    dice_loss(logits[:, 0].sigmoid(), y)
                    if foreground
                    else F.cross_entropy(logits, y, ignore_index=IGNORE)
                )
                loss = loss + weight * term
        return loss


TASK_BACKENDS.register("torchvision")(TorchvisionBackend())
