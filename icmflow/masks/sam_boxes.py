"""Object masks from Segment Anything box prompts, for datasets that have boxes only.

SAM embeds each image once and predicts one mask for each of its ground-truth boxes (the boxes
are decoded together, `boxes_per_batch` at a time). Each mask is clipped to its box (pixels whose
centres lie inside it), so a box never adds pixels outside itself, and the object mask is their
union. Crowd regions (`iscrowd: 1`: groups, ignored regions) are no single objects: they enter as
annotated, under the same `include_crowd` switch as annotation masks. Boxes of zero area, empty
in annotation masks, stay empty. The store, its reader and training are those of annotation
masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from distributed import Client

from icmflow.core.resume import fingerprint
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import object_mask
from icmflow.masks.build import build_store, check_geometry, group_by_shard, read_image
from icmflow.masks.store import pack
from icmflow.vision.sam.model import SamRunner, SamSpec, sam_session


def clip_to_boxes(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each of the masks K×H×W without its pixels whose centres lie outside its box (K×4 xyxy)."""
    _, h, w = masks.shape
    ys = torch.arange(h, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=masks.device, dtype=torch.float32) + 0.5
    boxes = boxes.to(masks.device, torch.float32)
    rows = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    cols = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    return masks & rows[:, :, None] & cols[:, None, :]


def sam_box_object_mask(
    runner: SamRunner,
    image: np.ndarray,
    instances: list[dict],
    *,
    include_crowd: bool,
    boxes_per_batch: int,
) -> np.ndarray:
    """The object mask of one image (H×W×3 RGB) from SAM's masks of its instances' boxes."""
    h, w = image.shape[:2]
    crowd = [a for a in instances if a.get("iscrowd", 0)]
    union = object_mask(crowd, h, w, include_crowd=include_crowd)
    xywh = np.array(
        [a["bbox"] for a in instances if not a.get("iscrowd", 0)], dtype=np.float64
    ).reshape(-1, 4)
    xywh = xywh[(xywh[:, 2] > 0) & (xywh[:, 3] > 0)]
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    start = 0
    for masks in runner.box_masks(image, boxes, boxes_per_batch=boxes_per_batch):
        clipped = clip_to_boxes(masks, torch.as_tensor(boxes[start : start + len(masks)]))
        union |= clipped.any(dim=0).cpu().numpy()
        start += len(masks)
    return union


def _sam_box_masks(
    payload: tuple[str, list[tuple[dict, list[dict], str]], bool, SamSpec, int],
) -> list[np.ndarray]:
    source, images, include_crowd, spec, boxes_per_batch = payload
    masks = []
    with sam_session(spec) as runner:
        for image, instances, path in images:
            check_geometry(source, image, instances)
            mask = sam_box_object_mask(
                runner,
                read_image(source, image, path),
                instances,
                include_crowd=include_crowd,
                boxes_per_batch=boxes_per_batch,
            )
            masks.append(pack(mask))
    return masks


def build_sam_box_masks(
    dataset: PreparedDataset,
    out: Path,
    *,
    work: Path,
    spec: SamSpec,
    include_crowd: bool,
    boxes_per_batch: int,
    images_per_shard: int,
    client: Client | None,
) -> Path:
    """Object masks of `dataset` from SAM box prompts, stored at `out` like annotation masks."""
    payloads = [
        (
            str(dataset.path),
            [(image, instances, str(dataset.image_path(image))) for image, instances in shard],
            include_crowd,
            spec,
            boxes_per_batch,
        )
        for shard in group_by_shard(dataset.data, images_per_shard)
    ]
    images, sam = dataset.images, spec.identity()
    digest = fingerprint(
        "sam-boxes", images, dataset.data["annotations"], include_crowd, sam, images_per_shard
    )
    return build_store(
        out,
        work=work,
        images=images,
        payloads=payloads,
        make_masks=_sam_box_masks,
        images_per_shard=images_per_shard,
        attrs={
            "kind": "object",
            "from": "sam-boxes",
            "crowd": "include" if include_crowd else "exclude",
            "source": str(dataset.path),
            "sam": sam,
            "fingerprint": digest,
        },
        client=client,
        desc=f"SAM box masks {dataset.path.name}",
    )
