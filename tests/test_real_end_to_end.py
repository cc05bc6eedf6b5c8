"""A real Cityscapes frame through the whole library: read, mask, train a tiny codec, code it."""

from __future__ import annotations

import math

import numpy as np
import torch

from icmflow.coding.codec import decompress_image
from icmflow.coding.coded_dataset import encode_dataset, read_bytes_per_image
from icmflow.coding.registry import create_model
from icmflow.datasets.coco import normalise
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.datasets.readers import read_split
from icmflow.errors import ProblemLog
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore
from icmflow.training.data import MaskedCrops
from icmflow.training.losses import RateDistortionLoss
from icmflow.training.trainer import train_codec
from tests.conftest import real_sample


def test_train_and_encode_a_real_sample(tmp_path):
    root = real_sample("cityscapes-frankfurt1")
    images = root / "leftImg8bit" / "val"
    problems = ProblemLog("raise")
    raw = read_split("cityscapes", root / "gtFine" / "val", images, problems)
    write_prepared(
        tmp_path / "val.json",
        normalise(raw, images, problems),
        image_root=images,
        final_dir=tmp_path,
    )
    dataset = PreparedDataset.load(tmp_path / "val.json")
    masks = build_object_masks(
        dataset.data,
        tmp_path / "val.zarr",
        work=tmp_path / "work",
        source=str(dataset.path),
        include_crowd=True,
        images_per_shard=1,
        client=None,
    )
    torch.manual_seed(0)
    model, _, _, last = train_codec(
        create_model("bmshj2018-hyperprior", N=8, M=8),
        MaskedCrops(dataset, masks, patch_size=64),
        RateDistortionLoss(0.05, masked=True),
        steps=3,
        batch_size=2,
        lr=1e-3,
        aux_lr=1e-3,
        clip_max_norm=1.0,
        lr_milestones=[],
        seed=0,
        num_workers=0,
        device=torch.device("cpu"),
        log_path=tmp_path / "log.csv",
    )
    assert math.isfinite(last["loss"])
    model.eval().update(force=True)
    summary = encode_dataset(model, dataset, tmp_path / "coded")
    image = dataset.images[0]
    stream = (tmp_path / "coded" / "bitstreams" / f"{image['file_name'][:-4]}.bin").read_bytes()
    decoded = read_rgb(tmp_path / "coded" / "images" / f"{image['file_name'][:-4]}.png")
    np.testing.assert_array_equal(decoded, decompress_image(model, stream))
    assert decoded.shape == (128, 256, 3)
    assert summary["bpp"] == 8 * len(stream) / (256 * 128)
    rows, metrics = evaluate_coded(
        dataset,
        PreparedDataset.load(tmp_path / "coded" / "annotations.json"),
        MaskStore(masks),
        read_bytes_per_image(tmp_path / "coded"),
    )
    assert metrics["images_with_objects"] == 1 and math.isfinite(metrics["object_psnr"])
    assert 0 < rows[0]["object_fraction"] < 0.1
