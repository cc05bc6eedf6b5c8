"""YOLOv5's training loss, written from its published description.

Each ground-truth box is assigned, on every level, to the anchors whose width and height are
both within a factor `anchor_t` (4) of its own, and for each such anchor to three cells: the
one holding the box centre and its two nearest neighbours (left or right, above or below, by
which half of its cell the centre lies in; none beyond the border). The head can place a box
centre up to half a cell outside its cell, so the neighbours can predict it too.

Per level: the box loss is 1 - CIoU between each assigned prediction and its box (mean over
the assignments); the objectness target of an assigned anchor-cell is that CIoU (detached,
clamped at 0), of every other one 0, under binary cross-entropy weighted per level (4, 1, 0.4
for strides 8, 16, 32); the class loss is binary cross-entropy of the assigned predictions'
class logits against one-hot targets (none for a single class). The three are weighted by
`box`, `obj`, `cls` (0.05, 1.0, 0.5; scaled for the number of levels and classes and the input
size as YOLOv5 scales them) and the sum is multiplied by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, complete_box_iou_loss

from icmflow.vision.tasks.yolov5_model import Detect

LEVEL_BALANCE = {3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.25, 0.06), 5: (4.0, 1.0, 0.25, 0.06, 0.02)}
"""Objectness weight per level (finest first), by number of levels."""
NEIGHBOURS = torch.tensor([[0, 0], [-1, 0], [0, -1], [1, 0], [0, 1]])
"""Cell offsets: the centre's own cell, then left, above, right, below."""


@dataclass(frozen=True)
class LossGains:
    """YOLOv5's loss hyperparameters (its `hyp.scratch-low.yaml` values)."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0


@dataclass(frozen=True)
class Assignment:
    """Predictions assigned to ground-truth boxes on one level."""

    image: torch.Tensor
    anchor: torch.Tensor
    cell_y: torch.Tensor
    cell_x: torch.Tensor
    box: torch.Tensor
    """(n, 4) cx, cy relative to the cell's corner, w, h: in cells."""
    cls: torch.Tensor


class YoloV5Loss:
    """The loss of a `Detect` head's raw outputs against targets (n, 6): image index in the
    batch, class, cx, cy, w, h normalised to the input image."""

    def __init__(self, detect: Detect, input_size: int, gains: LossGains = LossGains()):
        if detect.nl not in LEVEL_BALANCE:
            raise ValueError(f"a YOLOv5 head of {detect.nl} levels; 3 to 5 are known")
        self.detect, self.anchor_t = detect, gains.anchor_t
        per_level = 3 / detect.nl
        self.box = gains.box * per_level
        self.cls = gains.cls * detect.nc / 80 * per_level
        self.obj = gains.obj * (input_size / 640) ** 2 * per_level
        self.balance = LEVEL_BALANCE[detect.nl]

    def __call__(self, raw: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        device = raw[0].device
        box_loss, obj_loss, cls_loss = (torch.zeros((), device=device) for _ in range(3))
        for level, out in enumerate(raw):
            objectness = torch.zeros(out.shape[:4], device=device)
            found = self.assign(level, out.shape[2], out.shape[3], targets.to(device))
            if found.image.numel():
                assigned = out[found.image, found.anchor, found.cell_y, found.cell_x]
                ciou = self._ciou(level, assigned, found)
                box_loss = box_loss + (1 - ciou).mean()
                cell = (found.image, found.anchor, found.cell_y, found.cell_x)
                objectness[cell] = ciou.detach().clamp(min=0)
                if self.detect.nc > 1:
                    onehot = F.one_hot(found.cls, self.detect.nc).float()
                    cls_loss = cls_loss + F.binary_cross_entropy_with_logits(
                        assigned[:, 5:], onehot
                    )
            obj_loss = obj_loss + self.balance[level] * F.binary_cross_entropy_with_logits(
                out[..., 4], objectness
            )
        total = self.box * box_loss + self.obj * obj_loss + self.cls * cls_loss
        return total * raw[0].shape[0]

    def _ciou(self, level: int, assigned: torch.Tensor, found: Assignment) -> torch.Tensor:
        anchors = self.detect.anchors[level][found.anchor]
        xy = assigned[:, :2].sigmoid() * 2 - 0.5
        wh = (assigned[:, 2:4].sigmoid() * 2) ** 2 * anchors
        predicted = box_convert(torch.cat((xy, wh), 1), "cxcywh", "xyxy")
        truth = box_convert(found.box, "cxcywh", "xyxy")
        return 1 - complete_box_iou_loss(predicted, truth, reduction="none")

    def assign(self, level: int, height: int, width: int, targets: torch.Tensor) -> Assignment:
        """The anchor-cells of level `level` (a height x width grid) that predict `targets`."""
        anchors = self.detect.anchors[level]
        size = targets.new_tensor([width, height])
        centre, wh = targets[:, 2:4] * size, targets[:, 4:6] * size
        ratio = wh[None] / anchors[:, None]
        fits = torch.maximum(ratio, 1 / ratio).amax(-1) < self.anchor_t  # (anchors, targets)
        anchor, target = fits.nonzero(as_tuple=True)
        centre, within = centre[target], centre[target] % 1
        far = size - centre
        use = torch.stack(
            (
                torch.ones_like(within[:, 0], dtype=torch.bool),
                (within[:, 0] < 0.5) & (centre[:, 0] > 1),
                (within[:, 1] < 0.5) & (centre[:, 1] > 1),
                (far[:, 0] % 1 < 0.5) & (far[:, 0] > 1),
                (far[:, 1] % 1 < 0.5) & (far[:, 1] > 1),
            ),
        )
        neighbour, pair = use.nonzero(as_tuple=True)  # offset-major: own cells first
        cell = centre[pair].floor().long() + NEIGHBOURS.to(targets.device)[neighbour]
        cell_x, cell_y = cell[:, 0].clamp(0, width - 1), cell[:, 1].clamp(0, height - 1)
        relative = centre[pair] - torch.stack((cell_x, cell_y), 1)
        chosen = target[pair]
        return Assignment(
            image=targets[chosen, 0].long(),
            anchor=anchor[pair],
            cell_y=cell_y,
            cell_x=cell_x,
            box=torch.cat((relative, wh[chosen]), 1),
            cls=targets[chosen, 1].long(),
        )
