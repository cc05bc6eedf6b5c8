"""Edge masks (SA-ICM): the edges of the masks Segment Anything finds in an image.

Two methods (`EdgeSettings.method`):

- `canny`, SA-ICM's (Shindo et al., 2024): SAM's masks are rendered as one segmentation map and
  a Canny detector draws its edges (`segmentation_map`, `canny_edges`). The map gives each pixel
  the smallest mask covering it, as SAM's own rendering (its notebooks' `show_anns`, which
  paints masks from the largest to the smallest) shows it; pixels of no mask form one region.
  Canny runs with both thresholds 0 on the map coded as 24-bit colours (mask k as the bytes of
  k): the map is constant inside regions, so its edges are the changes of region, thinned by
  Canny's non-maximum suppression to one pixel on the top/left side of each step (corners are
  cut diagonally). For w > 1 the line is dilated to 2w - 1 pixels.
- `boundary`: the union of the boundaries of all masks (below).

Boundary convention, for an edge width w ≥ 1: a pixel is an edge pixel of a mask when it belongs
to the mask and some pixel of the image outside the mask lies within Chebyshev distance w of it
(w pixels in any of the 8 directions). The boundary is thus drawn w pixels wide on the mask's own
side; where two masks meet, both sides are drawn (2w pixels). The image border is no boundary
(in either method): pixels beyond it count as neither inside nor outside.

`edge_mask` finds the same masks as `SamAutomaticMaskGenerator` with one crop layer (SAM's
default) and the same thresholds — the same prompts, filters, full-resolution logits and
non-maximum suppression — but skips what an edge mask does not need:

- masks below `pred_iou_thresh` are dropped before they are brought to full resolution;
- no masks go through run-length encodings (SAM encodes every candidate and decodes every
  result, on the CPU); candidates keep their 256×256 logits, and only the masks kept by the
  non-maximum suppression are brought to full resolution a second time, for their edges;
- optional reduced precision (`SamSpec.precision`) for the image encoder and the decoder.

Memory: besides the model and the encoder (which works at 1024×1024 whatever the image size),
the decoder holds `points_per_batch` prompts at a time, every candidate keeps 256 KiB of logits
(at most 3·points_per_side² candidates: 768 MiB at 32 points per side if no threshold removes
any), and full-resolution work is chunked to `SamSpec.memory_mb`; see `icmflow.vision.sam.model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from distributed import Client
from segment_anything import SamPredictor
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    remove_small_regions,
)
from torchvision.ops import batched_nms

from icmflow.core.resume import fingerprint
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.build import build_store, read_image
from icmflow.masks.store import pack
from icmflow.vision.sam.model import SamRunner, SamSpec, sam_session

STABILITY_SCORE_OFFSET = 1.0
"""SAM's default logit offset for the stability score."""
SMALL_REGION_NMS_THRESH = 0.7
"""SAM's crop NMS threshold, which its small-region clean-up uses as a floor."""
EDGE_METHODS = ("canny", "boundary")
MAX_REGIONS = 2**24 - 1
"""Masks a segmentation map can number: Canny reads it as 24-bit colours."""


@dataclass(frozen=True)
class EdgeSettings:
    """How edges are drawn (`method`, `edge_width`) and the automatic mask generator's
    settings (SAM's defaults; SA-ICM's confidence α is `pred_iou_thresh`)."""

    method: str = "canny"
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_region_area: int = 0
    edge_width: int = 1

    def __post_init__(self) -> None:
        if self.method not in EDGE_METHODS:
            raise ValueError(f"edge method {self.method!r}: use one of {', '.join(EDGE_METHODS)}")


def mask_edges(masks: torch.Tensor, width: int) -> torch.Tensor:
    """The boundary pixels (module docstring) of each of the boolean masks K×H×W."""
    if width < 1:
        raise ValueError(f"edge width must be at least 1 pixel, got {width}")
    outside = (~masks)[:, None].to(torch.float16 if masks.is_cuda else torch.float32)
    # max pooling pads with -inf: pixels beyond the image border never count as outside
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1, padding=width)[:, 0] > 0
    return masks & near_outside


def _candidates(
    runner: SamRunner, predictor: SamPredictor, size: tuple[int, int], settings: EdgeSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Low-resolution logits, predicted IoUs and boxes of the masks that pass the filters."""
    h, w = size
    grid = build_point_grid(settings.points_per_side) * np.array([[w, h]])
    chunk = runner.chunk(h, w)
    kept_logits, kept_iou, kept_boxes = [], [], []
    step = settings.points_per_batch
    for start in range(0, len(grid), step):
        points = predictor.transform.apply_coords(grid[start : start + step], size)
        points = torch.as_tensor(points, dtype=torch.float, device=runner.device)
        low_res, iou = runner.decode(predictor, points=points, multimask=True)
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        if settings.pred_iou_thresh > 0:
            keep = iou > settings.pred_iou_thresh
            low_res, iou = low_res[keep], iou[keep]
        stability, boxes = [], []
        for part in low_res.split(chunk):
            logits = runner.upscale(predictor, part)
            stability.append(
                calculate_stability_score(logits, runner.threshold, STABILITY_SCORE_OFFSET)
            )
            boxes.append(batched_mask_to_box(logits > runner.threshold))
            del logits
        if not stability:
            continue
        stability = torch.cat(stability)
        keep = stability >= settings.stability_score_thresh
        if settings.stability_score_thresh <= 0:  # as SAM: no filter (NaN scores pass too)
            keep = torch.ones_like(keep)
        kept_logits.append(low_res[keep])
        kept_iou.append(iou[keep])
        kept_boxes.append(torch.cat(boxes)[keep])
    if not kept_logits:
        return None
    return torch.cat(kept_logits), torch.cat(kept_iou), torch.cat(kept_boxes)


def _full_masks(
    runner: SamRunner, predictor: SamPredictor, low_res: torch.Tensor, chunk: int
) -> Iterator[torch.Tensor]:
    for part in low_res.split(chunk):
        yield runner.upscale(predictor, part) > runner.threshold


def _without_small_regions(mask: np.ndarray, area: int) -> tuple[np.ndarray, bool]:
    """SAM's clean-up of one mask: small holes filled, then small islands removed; changed?"""
    mask, holes = remove_small_regions(mask, area, mode="holes")
    mask, islands = remove_small_regions(mask, area, mode="islands")
    return mask, holes or islands


def _small_region_survivors(
    runner: SamRunner,
    predictor: SamPredictor,
    low_res: torch.Tensor,
    settings: EdgeSettings,
    chunk: int,
) -> torch.Tensor:
    """Indices kept by SAM's `postprocess_small_regions`: NMS again on the cleaned masks'
    boxes, preferring masks the clean-up left unchanged."""
    boxes, unchanged = [], []
    for masks in _full_masks(runner, predictor, low_res, chunk):
        for mask in masks.cpu().numpy():
            cleaned, changed = _without_small_regions(mask, settings.min_region_area)
            boxes.append(batched_mask_to_box(torch.from_numpy(cleaned)))
            unchanged.append(float(not changed))
    return batched_nms(
        torch.stack(boxes).float(),
        torch.tensor(unchanged),
        torch.zeros(len(boxes)),
        iou_threshold=max(settings.box_nms_thresh, SMALL_REGION_NMS_THRESH),
    )


@torch.no_grad()
def automatic_masks(
    runner: SamRunner, image: np.ndarray, settings: EdgeSettings
) -> Iterator[torch.Tensor]:
    """The masks SAM's automatic mask generator keeps for an H×W×3 uint8 RGB image, as
    boolean K×H×W chunks (at most `runner.chunk(H, W)` masks each), in no particular order."""
    predictor = runner.embed(image)
    candidates = _candidates(runner, predictor, image.shape[:2], settings)
    if candidates is None:
        return
    low_res, iou, boxes = candidates
    keep = batched_nms(
        boxes.float(), iou, torch.zeros_like(iou), iou_threshold=settings.box_nms_thresh
    )
    low_res, chunk = low_res[keep], runner.chunk(*image.shape[:2])
    if settings.min_region_area <= 0:
        yield from _full_masks(runner, predictor, low_res, chunk)
        return
    keep = _small_region_survivors(runner, predictor, low_res, settings, chunk)
    for masks in _full_masks(runner, predictor, low_res[keep.to(low_res.device)], chunk):
        cleaned = [
            _without_small_regions(m, settings.min_region_area)[0] for m in masks.cpu().numpy()
        ]
        yield torch.from_numpy(np.stack(cleaned)).to(runner.device)


def segmentation_map(
    chunks: Iterable[torch.Tensor], shape: tuple[int, int], device: torch.device | str = "cpu"
) -> np.ndarray:
    """The segmentation map (H×W int32) of boolean K×H×W mask chunks: each pixel holds the
    number (1, 2, ... in the order given) of the smallest mask covering it, a tie going to the
    later mask, and 0 where no mask does."""
    labels = torch.zeros(shape, dtype=torch.int32, device=device)
    smallest = torch.full(shape, torch.iinfo(torch.int32).max, dtype=torch.int32, device=device)
    label = 0
    for masks in chunks:
        for mask, area in zip(masks, masks.sum(dim=(1, 2)), strict=True):
            label += 1
            if label > MAX_REGIONS:
                raise ValueError(f"more than {MAX_REGIONS} masks for one segmentation map")
            painted = mask & (area <= smallest)
            labels[painted] = label
            smallest[painted] = area
    return labels.cpu().numpy()


def canny_edges(labels: np.ndarray, width: int) -> np.ndarray:
    """The Canny edges (H×W bool) of a segmentation map of region numbers below 2**24: its
    changes of region, one pixel wide (dilated to 2·width - 1 pixels)."""
    if width < 1:
        raise ValueError(f"edge width must be at least 1 pixel, got {width}")
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) <= MAX_REGIONS:
        raise ValueError(f"region numbers must lie in 0..{MAX_REGIONS}")
    colours = np.stack([(labels >> shift) & 0xFF for shift in (0, 8, 16)], axis=-1)
    edges = cv2.Canny(np.ascontiguousarray(colours, dtype=np.uint8), 0, 0)
    if width > 1:
        edges = cv2.dilate(edges, np.ones((2 * width - 1, 2 * width - 1), dtype=np.uint8))
    return edges > 0


def edge_mask(runner: SamRunner, image: np.ndarray, settings: EdgeSettings) -> np.ndarray:
    """The edge mask (H×W bool) of an H×W×3 uint8 RGB image."""
    masks = automatic_masks(runner, image, settings)
    if settings.method == "canny":
        labels = segmentation_map(masks, image.shape[:2], runner.device)
        return canny_edges(labels, settings.edge_width)
    union = torch.zeros(image.shape[:2], dtype=torch.bool, device=runner.device)
    for chunk in masks:
        union |= mask_edges(chunk, settings.edge_width).any(dim=0)
    return union.cpu().numpy()


def _edge_masks(payload: tuple[str, list[tuple[dict, str]], SamSpec, EdgeSettings]) -> list:
    source, images, spec, settings = payload
    with sam_session(spec) as runner:
        return [
            pack(edge_mask(runner, read_image(source, image, path), settings))
            for image, path in images
        ]


def build_edge_masks(
    dataset: PreparedDataset,
    out: Path,
    *,
    work: Path,
    spec: SamSpec,
    settings: EdgeSettings,
    images_per_shard: int,
    client: Client | None,
) -> Path:
    """Edge masks of every image of `dataset`, stored at `out` (same layout as object masks)."""
    images = dataset.images
    payloads = [
        (
            str(dataset.path),
            [(image, str(dataset.image_path(image))) for image in images[s : s + images_per_shard]],
            spec,
            settings,
        )
        for s in range(0, len(images), images_per_shard)
    ]
    generator = {k: v for k, v in asdict(settings).items() if k != "points_per_batch"}
    sam = spec.identity()
    digest = fingerprint("edge", images, sam, generator, images_per_shard)
    return build_store(
        out,
        work=work,
        images=images,
        payloads=payloads,
        make_masks=_edge_masks,
        images_per_shard=images_per_shard,
        attrs={
            "kind": "edge",
            "source": str(dataset.path),
            "sam": sam,
            "edges": generator,
            "fingerprint": digest,
        },
        client=client,
        desc=f"edge masks {dataset.path.name}",
    )
