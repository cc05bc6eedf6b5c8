"""Fine-tuning a YOLOv5 detector on a prepared dataset (a coded train split), YOLOv5's way.

As YOLOv5's `train.py` with its `hyp.scratch-low.yaml`: SGD with Nesterov momentum 0.937 in
three parameter groups (weights decayed by 5e-4, BatchNorm weights and biases not), gradients
accumulated to a nominal batch of 64 (`nbs`, weight decay scaled with it), the learning rate
(`lr`, default 0.01) falling linearly to `lrf` x `lr` over the epochs after a warm-up of
`warmup_epochs` (learning rates from 0, biases' from 0.1, momentum from 0.8), gradient norms
clipped at 10, and the exponential moving average of the weights (ultralytics' `ModelEMA`, as
YOLOv5's) saved, in YOLOv5's checkpoint format. The optimiser also steps after the last batch,
so a run shorter than one nominal batch still trains. Images are letterboxed to the square
input size and flipped left-right at random (`fliplr`); YOLOv5's mosaic, scale, colour and
perspective augmentations are not applied. Dataset categories map to the model's classes by
name (every category needs one); crowd annotations are not trained on. Every option is a key
of `Options` or `LossGains`, in the task's `finetune.options`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from icmflow.core.errors import IcmflowError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.tasks.classes import class_mapping
from icmflow.vision.tasks.base import TaskModelSpec, TrainingData, TrainSettings
from icmflow.vision.tasks.offline import import_ultralytics
from icmflow.vision.tasks.yolov5_checkpoint import read_yolov5, write_yolov5
from icmflow.vision.tasks.yolov5_loss import LossGains, YoloV5Loss
from icmflow.vision.tasks.yolov5_model import Model, class_names
from icmflow.vision.tasks.yolov5_predict import letterbox, to_tensor

log = logging.getLogger(__name__)

DEFAULT_LR = 0.01
MAX_GRAD_NORM = 10.0


@dataclass(frozen=True)
class Options:
    """YOLOv5's optimiser and augmentation settings (`hyp.scratch-low.yaml`)."""

    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    lrf: float = 0.01
    fliplr: float = 0.5
    nbs: int = 64


def parse_options(options: dict[str, Any]) -> tuple[Options, LossGains]:
    """`finetune.options` split into optimiser settings and loss gains; unknown keys refused."""
    names = {kind: {f.name for f in fields(kind)} for kind in (Options, LossGains)}
    unknown = sorted(set(options) - names[Options] - names[LossGains])
    if unknown:
        known = ", ".join(sorted(names[Options] | names[LossGains]))
        raise IcmflowError(
            f"fine-tuning options {unknown}: the yolov5 backend knows {known}; fix params.yaml"
        )
    return (
        Options(**{k: v for k, v in options.items() if k in names[Options]}),
        LossGains(**{k: v for k, v in options.items() if k in names[LossGains]}),
    )


class Batches:
    """A prepared dataset's images letterboxed to a square and their boxes as training targets."""

    def __init__(self, dataset: PreparedDataset, to_class: dict[int, int], size: int):
        self.dataset, self.to_class, self.size = dataset, to_class, size

    def __len__(self) -> int:
        return len(self.dataset.images)

    def batch(self, indices: list[int], flips: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, 3, size, size) images in [0, 1] and targets (n, 6): index in the batch, class,
        cx, cy, w, h normalised."""
        images, targets = [], []
        for position, (index, flip) in enumerate(zip(indices, flips, strict=True)):
            image, boxes = self._one(self.dataset.images[index])
            if flip:
                image, boxes[:, 2] = image[:, ::-1], 1 - boxes[:, 2]
            boxes[:, 0] = position
            images.append(image)
            targets.append(boxes)
        return to_tensor(images, "cpu"), torch.from_numpy(np.concatenate(targets))

    def _one(self, image: dict) -> tuple[np.ndarray, np.ndarray]:
        boxed = letterbox(read_rgb(self.dataset.image_path(image)), self.size, (self.size,) * 2)
        (sx, sy), (left, top) = boxed.scale, boxed.offset
        rows = []
        for ann in self.dataset.annotations[image["id"]]:
            x, y, w, h = ann["bbox"]
            if ann["iscrowd"] or w <= 0 or h <= 0:
                continue
            cx, cy = (x + w / 2) * sx + left, (y + h / 2) * sy + top
            box = np.array([cx, cy, w * sx, h * sy]) / self.size
            rows.append([0, self.to_class[ann["category_id"]], *box])
        return boxed.image, np.array(rows, dtype=np.float32).reshape(-1, 6)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """BatchNorm weights, other weights (decayed) and biases, as YOLOv5 groups them."""
    norm, weights, biases = [], [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(parameter)
            elif isinstance(module, nn.BatchNorm2d):
                norm.append(parameter)
            else:
                weights.append(parameter)
    return [
        {"params": norm, "weight_decay": 0.0, "bias": False},
        {"params": weights, "weight_decay": weight_decay, "bias": False},
        {"params": biases, "weight_decay": 0.0, "bias": True},
    ]


@dataclass(frozen=True)
class Schedule:
    """Learning rate, momentum and batches per optimiser step at each iteration: warm-up (the
    accumulation too rises from 1 batch), then the learning rate falls linearly per epoch."""

    lr: float
    epochs: int
    warmup: int
    accumulate: int
    options: Options

    def batches_per_step(self, iteration: int) -> int:
        if iteration >= self.warmup:
            return self.accumulate
        return max(1, round(float(np.interp(iteration, [0, self.warmup], [1, self.accumulate]))))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, iteration: int) -> None:
        o = self.options
        lr = self.lr * ((1 - epoch / self.epochs) * (1 - o.lrf) + o.lrf)
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = lr, o.momentum
            if iteration < self.warmup:
                start = o.warmup_bias_lr if group["bias"] else 0.0
                group["lr"] = float(np.interp(iteration, [0, self.warmup], [start, lr]))
                group["momentum"] = float(
                    np.interp(iteration, [0, self.warmup], [o.warmup_momentum, o.momentum])
                )


def fine_tune(spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path) -> Path:
    """Fine-tune `settings.initial` on `data.coco`; returns the weights written under `out`."""
    options, gains = parse_options(settings.options)
    torch.manual_seed(settings.seed)
    # YOLOv5 saves its parameters with requires_grad off
    model = read_yolov5(Path(settings.initial)).to(spec.device).requires_grad_(True)
    dataset = PreparedDataset.load(data.coco)  # refuses a split without images
    mapping = class_mapping(dataset.data["categories"], class_names(model), None)
    batches = Batches(dataset, mapping.to_model, spec.input_size)
    loss = YoloV5Loss(model.detect, spec.input_size, gains)
    per_epoch = math.ceil(len(batches) / settings.batch_size)
    accumulate = max(round(options.nbs / settings.batch_size), 1)
    decay = options.weight_decay * settings.batch_size * accumulate / options.nbs
    lr = DEFAULT_LR if settings.lr is None else settings.lr
    optimizer = torch.optim.SGD(
        parameter_groups(model, decay),
        lr=lr,
        momentum=options.momentum,
        nesterov=True,
    )
    warmup = round(options.warmup_epochs * per_epoch)
    schedule = Schedule(lr, settings.epochs, warmup, accumulate, options)
    import_ultralytics()
    from ultralytics.utils.torch_utils import ModelEMA

    ema = ModelEMA(model)
    generator = torch.Generator().manual_seed(settings.seed)
    last, last_step = settings.epochs * per_epoch - 1, -1
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(batches), generator=generator).tolist()
        flips = (torch.rand(len(batches), generator=generator) < options.fliplr).tolist()
        total = 0.0
        for k in range(per_epoch):
            iteration = epoch * per_epoch + k
            schedule.apply(optimizer, epoch, iteration)
            chosen = slice(k * settings.batch_size, (k + 1) * settings.batch_size)
            images, targets = batches.batch(order[chosen], flips[chosen])
            value = loss(model(images.to(spec.device)), targets.to(spec.device))
            value.backward()
            total += value.item()
            if iteration - last_step >= schedule.batches_per_step(iteration) or iteration == last:
                _step(model, optimizer)
                ema.update(model)
                last_step = iteration
        mean = total / per_epoch
        log.info("yolov5 fine-tuning epoch %d/%d: mean loss %.4f", epoch + 1, settings.epochs, mean)
    weights = Path(out) / "weights.pt"
    write_yolov5(weights, ema.ema)
    return weights


def _step(model: Model, optimizer: torch.optim.Optimizer) -> None:
    nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad()
