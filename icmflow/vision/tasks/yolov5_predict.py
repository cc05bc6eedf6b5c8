"""YOLOv5's input and output handling, as its `val.py` scores a detector.

Input: the image resized so its longer side is the input size (area interpolation when
shrinking, bilinear when enlarging), then padded with grey (114) to a rectangle of multiples of
the largest stride with half a stride of extra padding (`val`'s `rect` shapes, `pad=0.5`; for
one image, its own shape), centred. Training pads to a square instead.

Output: every prediction whose objectness exceeds `conf`, with every class whose
objectness x class probability exceeds `conf` (multi-label, as `val` runs NMS), at most
`MAX_NMS` of them by score, then per-class NMS at IoU `iou` and the best `max_det` kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms, box_convert

PAD_VALUE = 114
RECT_PAD = 0.5
"""Extra padding of `val`'s rectangles, in strides."""
MAX_NMS = 30000
"""Candidates NMS considers, the highest-scoring first (YOLOv5's limit)."""


@dataclass(frozen=True)
class Letterbox:
    """A resized, padded image (H, W, 3) uint8 and where the original lies in it."""

    image: np.ndarray
    scale: tuple[float, float]
    """Resized width / original width, resized height / original height."""
    offset: tuple[int, int]
    """Left and top padding, in pixels."""

    def to_original(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """xyxy boxes of the letterboxed image -> of the original (clipped to it)."""
        left, top = self.offset
        shift = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([self.scale[0], self.scale[1]] * 2)
        original = (boxes - shift) / scale
        limits = boxes.new_tensor([width, height, width, height])
        return original.clamp(min=boxes.new_zeros(4), max=limits)


def rect_shape(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
    """`val`'s padded (height, width) for an image of that aspect ratio."""
    aspect = height / width
    relative = (aspect, 1.0) if aspect < 1 else (1.0, 1 / aspect)
    return tuple(math.ceil(side * size / stride + RECT_PAD) * stride for side in relative)


def letterbox(rgb: np.ndarray, size: int, shape: tuple[int, int]) -> Letterbox:
    """`rgb` with its longer side resized to `size`, centred in a grey (height, width) `shape`."""
    height0, width0 = rgb.shape[:2]
    ratio = size / max(height0, width0)
    image = rgb
    if ratio != 1:
        interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        resized = (math.ceil(width0 * ratio), math.ceil(height0 * ratio))
        image = cv2.resize(rgb, resized, interpolation=interpolation)
    height, width = image.shape[:2]
    if height > shape[0] or width > shape[1]:
        raise ValueError(f"a {width}x{height} image does not fit a {shape[1]}x{shape[0]} input")
    top = round((shape[0] - height) / 2 - 0.1)
    left = round((shape[1] - width) / 2 - 0.1)
    padded = cv2.copyMakeBorder(
        image,
        top,
        shape[0] - height - top,
        left,
        shape[1] - width - left,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE,) * 3,
    )
    return Letterbox(padded, (width / width0, height / height0), (left, top))


def to_tensor(images: list[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """(batch, 3, H, W) float in [0, 1] from RGB uint8 images of one size."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(device)
    return batch.permute(0, 3, 1, 2).float() / 255


def select(
    prediction: torch.Tensor, conf: float, iou: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's decoded cells (n, 5 + nc) -> xyxy boxes, scores and classes after NMS."""
    prediction = prediction[prediction[:, 4] > conf]
    scores = prediction[:, 5:] * prediction[:, 4:5]
    rows, classes = (scores > conf).nonzero(as_tuple=True)
    scores = scores[rows, classes]
    if scores.numel() > MAX_NMS:
        best = scores.topk(MAX_NMS).indices
        rows, classes, scores = rows[best], classes[best], scores[best]
    boxes = box_convert(prediction[rows, :4], "cxcywh", "xyxy")
    keep = batched_nms(boxes, scores, classes, iou)[:max_det]
    return boxes[keep], scores[keep], classes[keep]
