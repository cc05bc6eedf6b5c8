"""Build a mask store in parallel on a dask cluster, resumably, and move it into place when done.

Work happens in a `WorkDir`: `store.zarr` (the store being built) and `done/` (one marker per
finished shard, written after its shard). A rerun with the same fingerprint skips finished shards;
a different fingerprint starts over. The store reaches its final path only complete, by one
rename. At an fsspec URL (an object store shared by workers on several machines) there is no
rename: the store is built in place at its final URL and reads as complete only once its last
write, the `complete` flag, has landed; the work directory (a URL too) holds the shard markers.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, as_completed
from tqdm import tqdm

from icmflow.core.errors import InputError
from icmflow.core.files import remove, replace, write_bytes
from icmflow.core.resume import WorkDir, fingerprint
from icmflow.core.storage import is_url, location
from icmflow.datasets.coco import annotations_by_image, geometry_problem
from icmflow.datasets.images import read_rgb
from icmflow.datasets.rle import object_mask
from icmflow.masks.store import create_store, mark_complete, pack, store_attrs, write_shard

log = logging.getLogger(__name__)

MaskMaker = Callable[[Any], list[np.ndarray]]
"""Turns one shard's payload into that shard's masks, `pack`ed (each as soon as it is made, so
that a shard holds 1/8 of its masks' pixels in memory), in image order. Must be picklable."""


def _run_shard(store: str, done_dir: str, shard: int, make_masks: MaskMaker, payload: bytes) -> int:
    masks = make_masks(pickle.loads(payload))
    write_shard(store, shard, masks)
    write_bytes(location(done_dir) / f"{shard:06d}", b"")
    return len(masks)


def _is_complete_build(store: Path | str, digest: str) -> bool:
    try:
        attrs = store_attrs(store)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return bool(attrs.get("complete")) and attrs.get("fingerprint") == digest


def build_store(
    out: Path | str,
    *,
    work: Path | str,
    images: Sequence[dict],
    payloads: Sequence[Any],
    make_masks: MaskMaker,
    images_per_shard: int,
    attrs: dict[str, Any],
    client: Client | None,
    desc: str = "masks",
) -> Path:
    """Build the store at `out` from one payload per shard; `client=None` runs in this process.

    `images` are the store's images in order, each a dict with `id`, `height` and `width`.

    `attrs["fingerprint"]` must identify everything the masks depend on; a complete store with
    the same fingerprint already at `out` is kept as it is. `out` and `work` may be fsspec URLs.
    """
    n_shards = -(-len(images) // images_per_shard)
    if len(payloads) != n_shards:
        raise ValueError(f"{len(payloads)} payloads for {n_shards} shards")
    out, remote = location(out), is_url(out)
    if remote != is_url(work):
        raise ValueError(f"{out} and its work directory {work}: both local or both URLs")
    if (remote or out.exists()) and _is_complete_build(out, attrs["fingerprint"]):
        return out
    if not remote:
        remove(out)
    workdir = WorkDir(work, attrs["fingerprint"])
    store, done = out if remote else workdir.path / "store.zarr", workdir.path / "done"
    if workdir.resume():
        if not remote:
            for leftover in store.rglob("*.partial"):  # a zarr write killed before its rename
                leftover.unlink()
    else:
        if remote:
            remove(out)  # an earlier build's shards: not all are overwritten
        else:
            done.mkdir()
        create_store(
            store,
            image_ids=[image["id"] for image in images],
            heights=[image["height"] for image in images],
            widths=[image["width"] for image in images],
            images_per_shard=images_per_shard,
            attrs=attrs,
        )
        workdir.seal()
    finished_shards = {path.name for path in done.iterdir()} if done.exists() else set()
    todo = [s for s in range(n_shards) if f"{s:06d}" not in finished_shards]
    # Payloads travel pickled: dask would otherwise walk every list of every annotation looking
    # for futures, which took longer than building the masks (benchmarks/masks.py).
    tasks = [(str(store), str(done), s, make_masks, pickle.dumps(payloads[s])) for s in todo]
    finished = len(images) - sum(
        min(images_per_shard, len(images) - s * images_per_shard) for s in todo
    )
    with tqdm(total=len(images), initial=finished, desc=desc, unit="img") as bar:
        try:
            if client is None:
                for task in tasks:
                    bar.update(_run_shard(*task))
            else:
                futures = [client.submit(_run_shard, *task, pure=False) for task in tasks]
                try:
                    for future in as_completed(futures):
                        bar.update(future.result())
                except BaseException:
                    client.cancel(futures)
                    raise
        except InputError:
            workdir.discard()  # bad input: nothing to resume, the input must change first
            raise
    mark_complete(store)
    if not remote:
        replace(store, out)
    workdir.discard()
    return out


def check_geometry(source: str, image: dict, instances: list[dict]) -> None:
    """Raise an `InputError` for the first instance that does not fit its image."""
    for ann in instances:
        problem = geometry_problem(ann, image["width"], image["height"])
        if problem:
            raise InputError(
                source, f"annotation id={ann.get('id')} of image id={image['id']}", problem
            )


def read_image(source: str, image: dict, path: Path | str) -> np.ndarray:
    """The pixels of `image`, checked against the size its dataset `source` gives."""
    rgb = read_rgb(path)
    if rgb.shape[:2] != (image["height"], image["width"]):
        raise InputError(
            source,
            f"image id={image['id']}",
            f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, not {image['width']}x{image['height']}; "
            "the image changed after `icmflow prepare`: prepare the dataset again",
        )
    return rgb


def group_by_shard(dataset: dict, images_per_shard: int) -> list[list[tuple[dict, list[dict]]]]:
    """Each shard's images with their annotations, in image order."""
    grouped = annotations_by_image(dataset)
    images = dataset["images"]
    return [
        [(image, grouped[image["id"]]) for image in images[s : s + images_per_shard]]
        for s in range(0, len(images), images_per_shard)
    ]


def _object_masks(payload: tuple[str, list[tuple[dict, list[dict]]], bool]) -> list[np.ndarray]:
    source, images, include_crowd = payload
    masks = []
    for image, instances in images:
        check_geometry(source, image, instances)
        mask = object_mask(instances, image["height"], image["width"], include_crowd=include_crowd)
        masks.append(pack(mask))
    return masks


def build_object_masks(
    dataset: dict,
    out: Path,
    *,
    work: Path,
    source: str,
    include_crowd: bool,
    images_per_shard: int,
    client: Client | None,
) -> Path:
    """Object masks (union of each image's instances) of a normalised COCO dict, stored at `out`."""
    images = dataset["images"]
    payloads = [
        (source, shard, include_crowd) for shard in group_by_shard(dataset, images_per_shard)
    ]
    digest = fingerprint("object", images, dataset["annotations"], include_crowd, images_per_shard)
    return build_store(
        out,
        work=work,
        images=images,
        payloads=payloads,
        make_masks=_object_masks,
        images_per_shard=images_per_shard,
        attrs={
            "kind": "object",
            "crowd": "include" if include_crowd else "exclude",
            "source": source,
            "fingerprint": digest,
        },
        client=client,
        desc=f"object masks {Path(source).name}",
    )
