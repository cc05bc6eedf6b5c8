"""The training engine: a codec, an objective, CompressAI's two optimisers, a log, resumable state.

As in CompressAI's example: the main Adam optimiser takes every parameter except the entropy
bottlenecks' `quantiles` (and the objective's own trainable parameters, if it has any), the
auxiliary optimiser fits the quantiles by minimising `model.aux_loss()`; gradients are clipped
to `clip_max_norm`; the learning rate follows `lr_schedule` (`lr_scheduler`). With
`channels_last`, model and image batches use the NHWC memory layout, which CPUs and GPUs
convolve faster (measured in README). With `precision: bfloat16` the codec's forward pass runs
under autocast, its entropy models (the likelihoods) in float32. Each step logs every term the
objective returns, then `aux_loss` and `lr`, to a CSV file; the terms stay on the device and
reach the host every few steps, so a GPU is not stopped after each step. The caller updates the
model (`update(force=True)`) before saving it, so its checkpoint carries the entropy coder's
tables.

Batches come from an endless stream of items (`StreamSampler`), each drawing its random crop from
a seed of its own, so the stream does not depend on the number of processes or DataLoader
workers, and a resumed run continues it. On several processes (a `Group` of more than one):
every process takes its part of each global batch (`batch_size / world` items),
model and objective run under DistributedDataParallel, whose all-reduce averages the gradients,
so a step is the step of one process on the whole batch. The quantiles stay outside DDP: the aux
loss, which does not depend on the data, is computed on the model itself on every process and its
gradients averaged explicitly, so every process keeps the same quantiles. Logged terms are
averaged over the processes; only rank 0 writes the log and the resumable state, every process
resumes from that state. The state holds every process's random generators (`rng`), so a resumed
run draws the same noise as an uninterrupted one and ends with the same weights, bit for bit; it
is read as weights only (`load_weights`), like a checkpoint.

Batches are dicts of tensors (see `icmflow.training.objectives.base`); a dataset with a
`collate` method batches its own samples (e.g. boxes of different counts).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from compressai.entropy_models import EntropyModel
from compressai.models import CompressionModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from icmflow.codecs.checkpoint import load_weights
from icmflow.core.errors import IcmflowError
from icmflow.core.files import atomic_file
from icmflow.runtime.distributed import Group
from icmflow.training.data import Seeded, StreamSampler
from icmflow.training.objectives import Batch, Objective
from icmflow.training.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16"]
LrSchedule = Literal["multistep", "poly"]
SYNC_EVERY = 25
"""Steps between the host's reads of the logged terms (and their all-reduce)."""


class DivergedError(IcmflowError):
    """The loss became infinite or NaN: every later step would be NaN too."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    """The global batch: split over the processes of a group."""
    lr: float
    aux_lr: float
    clip_max_norm: float = 1.0
    lr_schedule: LrSchedule = "multistep"
    lr_milestones: tuple[int, ...] = ()
    """multistep: steps after which the learning rate drops tenfold."""
    lr_poly_power: float = 0.9
    lr_poly_start: float = 0.5
    """poly: the fraction of the steps after which the learning rate decays."""
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    channels_last: bool = False
    precision: Precision = "float32"
    save_every: int = 500


@dataclass
class TrainResult:
    model: CompressionModel
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    last: dict[str, float] = field(default_factory=dict)


def read_log(path: Path) -> list[dict[str, float]]:
    """The per-step log written by `train_codec`."""
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def configure_optimizers(
    model: CompressionModel,
    lr: float,
    aux_lr: float,
    objective: nn.Module | None = None,
    *,
    fused: bool | None = None,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Main and auxiliary Adam optimisers, split on `.quantiles` as CompressAI does.

    `fused`: PyTorch's one-kernel Adam (the same update, fewer kernel launches on a GPU).
    """
    named = dict(model.named_parameters())
    aux = [p for n, p in named.items() if n.endswith(".quantiles") and p.requires_grad]
    main = [p for n, p in named.items() if not n.endswith(".quantiles") and p.requires_grad]
    if objective is not None:
        main += [p for p in objective.parameters() if p.requires_grad]
    return (
        torch.optim.Adam(main, lr=lr, fused=fused),
        torch.optim.Adam([{"params": aux}], lr=aux_lr, fused=fused),  # none: a frozen codec
    )


@dataclass
class PolyDecay:
    """The poly schedule's factor after `step` steps: 1 up to step `start`, then
    (1 − (step − start) / (steps − start))^power, down to 0 after the last step."""

    steps: int
    start: int
    power: float

    def __call__(self, step: int) -> float:
        if step <= self.start:
            return 1.0
        return max(0.0, 1 - (step - self.start) / (self.steps - self.start)) ** self.power


def lr_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> torch.optim.lr_scheduler.LRScheduler:
    """`multistep`: the learning rate drops tenfold after each of `lr_milestones` (CompressAI's
    example); `poly`: polynomial decay of power `lr_poly_power` over the steps after the first
    `lr_poly_start` fraction (the auxiliary-loss paper: over the last half of training)."""
    if settings.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(settings.lr_milestones), gamma=0.1
        )
    if settings.lr_schedule != "poly":
        raise ValueError(f"lr_schedule {settings.lr_schedule!r}: multistep or poly")
    if not 0 <= settings.lr_poly_start < 1:
        raise ValueError(f"lr_poly_start {settings.lr_poly_start}: a fraction in [0, 1)")
    start = int(settings.lr_poly_start * settings.steps)
    decay = PolyDecay(settings.steps, start, settings.lr_poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


class _State:
    """Resumable training state in one file, saved every few steps through a rename."""

    def __init__(self, path: Path | None):
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        return load_weights(
            self.path, "training state", f"delete {self.path.parent} to train afresh"
        )

    def save(self, **state: Any) -> None:
        if self.path is None:
            return
        with atomic_file(self.path) as tmp, tmp.open("wb") as handle:
            torch.save(state, handle)


def _gathered_rng_state(group: Group) -> list[dict[str, Any]]:
    """The random generators' states of every process of `group`, by rank (on rank 0)."""
    state = rng_state(group.device)
    if group.world == 1:
        return [state]
    states: list[Any] = [None] * group.world
    dist.all_gather_object(states, state)
    return states


class _Log:
    """The CSV log: `step`, the objective's terms in the order it returns them, `aux_loss`, `lr`."""

    def __init__(self, path: Path, rows: list[dict[str, float]]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = rows
        self._handle = path.open("w", newline="")
        self._writer: csv.DictWriter | None = None
        for row in rows:
            self._write(row)

    def _write(self, row: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = csv.DictWriter(self._handle, list(row))
            self._writer.writeheader()
        self._writer.writerow(row)

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self._write(row)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _to(tensor: Any, device: torch.device, layout: torch.memory_format) -> Any:
    """A batch value on `device` (4-D tensors in `layout`; a list: each of its tensors)."""
    if isinstance(tensor, list):
        return [_to(t, device, layout) for t in tensor]
    tensor = tensor.to(device, non_blocking=True)
    return tensor.contiguous(memory_format=layout) if tensor.dim() == 4 else tensor


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast type of `precision` on `device` (None: plain float32)."""
    if precision == "float32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise IcmflowError(
            f"train.precision {precision}: {torch.cuda.get_device_name(device)} has no "
            "bfloat16; set train.precision: float32"
        )
    return torch.bfloat16


@contextmanager
def _likelihoods_in_float32(model: nn.Module, device_type: str, enabled: bool) -> Iterator[None]:
    """Run every entropy model of `model` in float32, outside autocast, while in the block."""
    models = [m for m in model.modules() if isinstance(m, EntropyModel)] if enabled else []

    def float32(forward):
        def run(*args, **kwargs):
            with torch.autocast(device_type, enabled=False):
                return forward(*(_float32(a) for a in args), **_float32(kwargs))

        return run

    for entropy_model in models:
        entropy_model.forward = float32(entropy_model.forward)
    try:
        yield
    finally:
        for entropy_model in models:
            del entropy_model.forward


class _Step(nn.Module):
    """The codec and its objective as one module (what DDP wraps): batch -> loss terms."""

    def __init__(self, model: CompressionModel, objective: Objective, autocast: torch.dtype | None):
        super().__init__()
        self.model, self.objective, self.autocast = model, objective, autocast

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch["x"]
        if self.autocast is None:
            return self.objective(self.model(x), batch)
        with torch.autocast(x.device.type, dtype=self.autocast):
            output = self.model(x)
        return self.objective(_float32(output), batch)


def _float32(output: Any) -> Any:
    """The codec's output with its tensors (also in dicts, e.g. `likelihoods`) in float32."""
    if isinstance(output, dict):
        return {k: _float32(v) for k, v in output.items()}
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def _distributed(step: _Step, group: Group) -> nn.Module:
    """`step` under DDP, its quantiles left out (they get the aux loss's gradients only)."""
    quantiles = [n for n, _ in step.named_parameters() if n.endswith(".quantiles")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, quantiles)
    for name, parameter in step.named_parameters():
        if name.endswith(".quantiles"):
            dist.broadcast(parameter.data, 0)
    return DistributedDataParallel(
        step,
        device_ids=[group.device.index] if group.device.type == "cuda" else None,
        broadcast_buffers=False,  # the codecs' buffers do not change while training
        gradient_as_bucket_view=True,
        find_unused_parameters=step.objective.partial_steps,
    )


def _average(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    if group.world > 1:
        dist.all_reduce(tensor)
        tensor /= group.world
    return tensor


def _average_gradients(parameters: list[nn.Parameter], group: Group) -> None:
    grads = [p.grad for p in parameters if p.grad is not None]
    if group.world == 1 or not grads:
        return
    flat = _average(torch.cat([g.reshape(-1) for g in grads]), group)
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def _loader(data: Dataset, settings: TrainSettings, group: Group, start: int) -> DataLoader:
    sampler = StreamSampler(
        len(data),
        settings.batch_size,
        settings.seed,
        rank=group.rank,
        world=group.world,
        start=start,
    )
    return DataLoader(
        Seeded(data),
        batch_size=settings.batch_size // group.world,
        sampler=sampler,
        num_workers=settings.num_workers,
        collate_fn=getattr(data, "collate", None),
        pin_memory=group.device.type == "cuda",
    )


def _resume_generators(saved: dict[str, Any], group: Group, path: Path | None) -> None:
    """Put this process's random generators where the saved run had them."""
    generators = saved.get("rng") or []
    if len(generators) == group.world:
        set_rng_state(generators[group.rank], group.device)
        return
    log.warning(
        "%s holds the random generators of %d processes, not %d: the resumed run draws other "
        "noise than an uninterrupted one would",
        path,
        len(generators),
        group.world,
    )


def train_codec(
    model: CompressionModel,
    objective: Objective,
    data: Dataset,
    settings: TrainSettings,
    *,
    log_path: Path,
    state_path: Path | None = None,
    group: Group | None = None,
) -> TrainResult:
    """Train for `settings.steps` steps; returns the model, both optimisers, the last terms.

    With `state_path`, rank 0 saves the state every `settings.save_every` steps and a rerun
    resumes from it, continuing the same stream of crops. `group` (default: this process alone,
    on `settings.device`) is the process group of a torchrun launch.
    """
    group = group or Group(device=torch.device(settings.device))
    device = group.device
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).train()
    objective.to(device).train()
    optimizer, aux_optimizer = configure_optimizers(
        model, settings.lr, settings.aux_lr, objective, fused=device.type == "cuda" or None
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # crops of one size: cuDNN picks its kernels once
    scheduler = lr_scheduler(optimizer, settings)
    quantiles = list(aux_optimizer.param_groups[0]["params"])
    state, rows, start = _State(state_path if group.main else None), [], 0
    saved = _State(state_path).load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        aux_optimizer.load_state_dict(saved["aux_optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rows, start = saved["rows"], saved["step"]
        log.info("resuming training at step %d from %s", start, state_path)
    torch.manual_seed(settings.seed + start + 100_003 * group.rank)  # the quantisation noise
    step_module = _Step(model, objective, autocast_dtype(settings.precision, device))
    runner = _distributed(step_module, group) if group.world > 1 else step_module
    batches = iter(_loader(data, settings, group, start))  # draws from torch's generator
    if saved is not None:
        _resume_generators(saved, group, state_path)
    result = TrainResult(model, optimizer, aux_optimizer)
    train_log = _Log(log_path, rows) if group.main else None
    pending: list[tuple[int, float, torch.Tensor]] = []
    names: list[str] = []

    def sync() -> None:
        """Bring the pending steps' terms to the host (averaged over the group) and log them."""
        if not pending:
            return
        values = _average(torch.stack([v for _, _, v in pending]), group).cpu().tolist()
        for (step, lr, _), row in zip(pending, values, strict=True):
            result.last = dict(zip(names, row[:-1], strict=True))
            if train_log is not None:
                train_log.add({"step": step, **result.last, "aux_loss": row[-1], "lr": lr})
            if not math.isfinite(result.last["loss"]):  # NaN weights from here on
                raise DivergedError(
                    f"the loss is {result.last['loss']} at step {step}: training diverged; "
                    "lower train.lr (or the codec's lmbda) and train again"
                )
        pending.clear()
        bar.set_postfix(loss=f"{result.last['loss']:.4g}")

    try:
        with (
            _likelihoods_in_float32(model, device.type, step_module.autocast is not None),
            tqdm(
                total=settings.steps,
                initial=start,
                desc="train",
                unit="step",
                disable=not group.main,
            ) as bar,
        ):
            for step in range(start + 1, settings.steps + 1):
                batch = {k: _to(v, device, layout) for k, v in next(batches).items()}
                optimizer.zero_grad()
                aux_optimizer.zero_grad()
                objective.begin_step(step, settings.steps)
                terms = runner(batch)
                terms["loss"].backward()
                if settings.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_max_norm)
                optimizer.step()
                aux_loss = model.aux_loss()
                if quantiles:  # a frozen codec (a secondary task's) fits none
                    aux_loss.backward()
                    _average_gradients(quantiles, group)
                    aux_optimizer.step()
                scheduler.step()
                names = list(terms)
                values = torch.stack([v.detach().float() for v in (*terms.values(), aux_loss)])
                pending.append((step, optimizer.param_groups[0]["lr"], values))
                bar.update()
                saving = step % settings.save_every == 0 and step < settings.steps
                if saving or step % SYNC_EVERY == 0 or step == settings.steps:
                    sync()
                generators = _gathered_rng_state(group) if saving else None
                if saving and train_log is not None:
                    train_log.flush()
                    state.save(
                        model=model.state_dict(),
                        objective=objective.state_dict(),
                        optimizer=optimizer.state_dict(),
                        aux_optimizer=aux_optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        rng=generators,
                        rows=train_log.rows,
                        step=step,
                    )
    finally:
        if train_log is not None:
            train_log.close()
    return result
