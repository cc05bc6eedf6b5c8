"""The Segment Anything model that params.yaml `sam` describes, with its checkpoint checked."""

from __future__ import annotations

from icmflow.core.errors import CheckpointError
from icmflow.pipeline.params import Params, ParamsError
from icmflow.runtime.devices import resolve_device, visible_gpus
from icmflow.vision.sam.model import SamSpec, check_checkpoint


def sam_spec(params: Params) -> SamSpec:
    """`params.sam` as a `SamSpec`; a missing or wrong checkpoint names `sam.checkpoint`."""
    options = params.sam
    if options.checkpoint is None:
        raise ParamsError(f"sam.checkpoint is not set in {params.source}")  # validation says how
    device = resolve_device(options.device, "sam.device")
    if options.precision == "float16" and device.type != "cuda":
        raise ParamsError("sam.precision float16 needs a CUDA device; on CPUs use bfloat16")
    try:
        check_checkpoint(options.checkpoint, options.model_type)
    except CheckpointError as err:
        raise ParamsError(
            f"{params.source} sam.checkpoint (model type {options.model_type}): {err}"
        ) from None
    return SamSpec(
        model_type=options.model_type,
        checkpoint=options.checkpoint,
        device=options.device,
        precision=options.precision,
        memory_mb=options.memory_mb,
    )


def sam_gpus(spec: SamSpec) -> list[str]:
    """The GPUs that get one dask worker each, or none when SAM runs on the CPU."""
    return visible_gpus() if resolve_device(spec.device).type == "cuda" else []
