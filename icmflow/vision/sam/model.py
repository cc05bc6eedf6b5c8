"""Segment Anything (SAM): checked checkpoints, one model per process, and prompt decoding whose
full-resolution work stays within a memory budget.

- Checkpoints are read from a path the user downloaded (official files: `OFFICIAL_CHECKPOINTS`,
  from `CHECKPOINTS_URL`); nothing is ever downloaded. `check_checkpoint` compares every tensor
  name and shape with the model type before any work starts, so a missing file, a file of
  another model type or a file that is no checkpoint fails at once with a clear message.
- `checkpoint=None` builds the model with seeded random weights: for tests and throughput
  benchmarks only (the pipeline's params always name a checkpoint).
- A process keeps one model (`sam_session`): dask workers load it on their first task and reuse
  it; a worker runs one SAM inference at a time, with as many torch threads as it has dask
  threads.
- Memory: the encoder always works at 1024×1024, whatever the image size. Prompts are decoded
  in batches, and masks are brought to full resolution `SamRunner.chunk(h, w)` at a time so
  that this work stays within `memory_mb` (see `FULL_RES_BYTES_PER_PIXEL`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from icmflow.core.errors import CheckpointError, UnknownNameError
from icmflow.core.resume import file_digest
from icmflow.runtime.cluster import worker_threads
from icmflow.runtime.devices import resolve_device
from icmflow.vision.sam.decoder import decode_prompts

OFFICIAL_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
PRECISIONS = ("float32", "bfloat16", "float16")
FULL_RES_BYTES_PER_PIXEL = 16
"""Bytes per image pixel and mask of full-resolution work: float32 logits, the boolean masks
and stability-score temporaries, and the float32 pooling input of the edge extraction."""

CPU_STEP = 4
"""On CPUs, prompts go through the mask decoder, and masks through the full-resolution steps,
this many at a time: each step's large tensors then stay in cache and reuse freed memory instead
of faulting in fresh pages, about twice as fast as 64 at a time (measured); GPUs take whole
batches."""

_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"


def where_to_get_checkpoints() -> str:
    names = ", ".join(f"{name} ({kind})" for kind, name in OFFICIAL_CHECKPOINTS.items())
    return (
        f"the official checkpoints are {names}; download one by hand from the segment-anything "
        f"repository's Model Checkpoints section, {CHECKPOINTS_URL} (icmflow never downloads)"
    )


@dataclass(frozen=True)
class SamSpec:
    """Which SAM to run and how: picklable, so that dask tasks can carry it."""

    model_type: str
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "float32"
    memory_mb: int = 512

    def identity(self) -> dict:
        """What masks made with this SAM depend on (not where or in how much memory it runs)."""
        checkpoint = None if self.checkpoint is None else Path(self.checkpoint)
        return {
            "model_type": self.model_type,
            "checkpoint": checkpoint.name if checkpoint else "random weights (seed 0)",
            "checkpoint_sha256": file_digest(checkpoint) if checkpoint else None,
            "precision": self.precision,
        }


def _builder(model_type: str):
    try:
        return sam_model_registry[model_type]
    except KeyError:
        known = ", ".join(k for k in sam_model_registry if k != "default")
        raise UnknownNameError(f"unknown SAM model type {model_type!r}; known: {known}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {where_to_get_checkpoints()}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as err:  # torch raises many types for files that are no checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(err).__name__}); {where_to_get_checkpoints()}"
        ) from None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(
            f"{path}: not a SAM checkpoint (a state dict of tensors); {where_to_get_checkpoints()}"
        )
    return state


def _model_type_of(state: dict[str, torch.Tensor]) -> str | None:
    """The official model type whose encoder width matches the checkpoint's, if any."""
    widths = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    weight = state.get(_PATCH_EMBED)
    return widths.get(weight.shape[0]) if weight is not None and weight.ndim == 4 else None


def check_checkpoint(path: Path | str, model_type: str) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, once every tensor matches `model_type` (names and shapes)."""
    path = Path(path)
    builder = _builder(model_type)
    state = _read_state(path)
    found = _model_type_of(state)
    if found is not None and found != model_type:
        raise CheckpointError(
            f"{path} is a {found} checkpoint (official name {OFFICIAL_CHECKPOINTS[found]}), but "
            f"the model type is {model_type}: set the model type to {found}, or use "
            f"{OFFICIAL_CHECKPOINTS.get(model_type, 'a ' + model_type + ' checkpoint')}"
        )
    with torch.device("meta"):
        expected = {k: v.shape for k, v in builder().state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for keys, what in (
                (missing, "missing tensors"),
                (unexpected, "unexpected tensors"),
                (reshaped, "tensors of another shape"),
            )
            if keys
        ]
        raise CheckpointError(
            f"{path}: not a SAM {model_type} checkpoint: {'; '.join(problems)}; "
            f"{where_to_get_checkpoints()}"
        )
    return state


def build_model(spec: SamSpec, device: torch.device) -> Sam:
    """The SAM of `spec` on `device`, in eval mode (seeded random weights without checkpoint)."""
    builder = _builder(spec.model_type)
    if spec.checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = builder()
    else:
        state = check_checkpoint(spec.checkpoint, spec.model_type)
        model = builder()
        model.load_state_dict(state)
    return model.to(device).eval()


class SamRunner:
    """One SAM model on one device: image embeddings, prompt decoding, full-resolution masks."""

    def __init__(self, model: Sam, spec: SamSpec):
        self.model, self.spec = model, spec
        self.device = model.device
        if spec.precision not in PRECISIONS:
            raise ValueError(f"precision {spec.precision!r}: use one of {', '.join(PRECISIONS)}")
        if spec.precision == "float16" and self.device.type != "cuda":
            raise ValueError("precision float16 needs a CUDA device; use bfloat16 on CPUs")

    @property
    def threshold(self) -> float:
        return self.model.mask_threshold

    def _autocast(self) -> AbstractContextManager:
        if self.spec.precision == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.spec.precision))

    def chunk(self, height: int, width: int) -> int:
        """How many masks fit in one full-resolution step of `memory_mb` (on CPUs, at most
        `CPU_STEP`)."""
        side = self.model.image_encoder.img_size
        per_mask = 4 * side * side + FULL_RES_BYTES_PER_PIXEL * height * width
        fit = max(1, self.spec.memory_mb * 2**20 // per_mask)
        return fit if self.device.type == "cuda" else min(fit, CPU_STEP)

    @torch.no_grad()
    def embed(self, image: np.ndarray) -> SamPredictor:
        """A predictor holding the embedding of `image` (H×W×3 uint8 RGB)."""
        predictor = SamPredictor(self.model)
        with self._autocast():
            predictor.set_image(image)
        return predictor

    @torch.no_grad()
    def decode(
        self,
        predictor: SamPredictor,
        *,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (B×C×256×256) and predicted IoUs (B×C), float32, from
        SAM's mask decoder computed without per-prompt copies of the image (`sam_decoder`).

        `points` (B×2, one foreground point per prompt) or `boxes` (B×4, x0 y0 x1 y1) are in
        the model's input frame (`predictor.transform`).
        """
        point_prompts = None
        if points is not None:
            labels = torch.ones(len(points), 1, dtype=torch.int, device=self.device)
            point_prompts = (points[:, None, :], labels)
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=point_prompts, boxes=boxes, masks=None)
            step = len(sparse) if self.device.type == "cuda" else CPU_STEP
            decoded = [
                decode_prompts(
                    self.model.mask_decoder,
                    predictor.features,
                    self.model.prompt_encoder.get_dense_pe(),
                    sparse[start : start + step],
                    dense[start : start + step],
                    multimask=multimask,
                )
                for start in range(0, len(sparse), step)
            ]
        return (
            torch.cat([low_res for low_res, _ in decoded]).float(),
            torch.cat([iou for _, iou in decoded]).float(),
        )

    @torch.no_grad()
    def upscale(self, predictor: SamPredictor, low_res: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits (K×H×W) of low-resolution logits (K×256×256), as SAM does."""
        logits = self.model.postprocess_masks(
            low_res[:, None], predictor.input_size, predictor.original_size
        )
        return logits[:, 0]

    @torch.no_grad()
    def box_masks(
        self, image: np.ndarray, boxes: np.ndarray, *, boxes_per_batch: int
    ) -> Iterator[torch.Tensor]:
        """SAM's mask for every box (x0, y0, x1, y1 in pixels), one image embedding for all.

        Yields boolean K×H×W chunks of masks in box order; one mask per box.
        """
        if len(boxes) == 0:
            return
        predictor = self.embed(image)
        size = image.shape[:2]
        step = min(boxes_per_batch, self.chunk(*size))
        for start in range(0, len(boxes), step):
            batch = torch.as_tensor(boxes[start : start + step], dtype=torch.float)
            batch = predictor.transform.apply_boxes_torch(batch, size).to(self.device)
            low_res, _ = self.decode(predictor, boxes=batch, multimask=False)
            yield self.upscale(predictor, low_res[:, 0]) > self.threshold


_MODELS: dict[tuple, Sam] = {}
_SESSION = threading.Lock()


@contextmanager
def sam_session(spec: SamSpec) -> Iterator[SamRunner]:
    """Exclusive use of this process's SAM model, built on first use and kept for later calls.

    In a dask worker on CPU, torch uses as many threads as the worker has.
    """
    with _SESSION:
        device = resolve_device(spec.device)
        key = (spec.model_type, spec.checkpoint, str(device))
        if key not in _MODELS:
            _MODELS.clear()  # one model per process
            _MODELS[key] = build_model(spec, device)
        threads = worker_threads()
        if threads and device.type == "cpu":
            torch.set_num_threads(threads)
        yield SamRunner(_MODELS[key], spec)
