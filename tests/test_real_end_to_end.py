"""A real Cityscapes frame through the whole library: read, mask, train a tiny codec, code it."""

from __future__ import annotations

import math

import numpy as np

from icmflow.coding.checkpoint import load_codec
from icmflow.coding.codec import decompress_image
from icmflow.coding.coded_dataset import encode_dataset, read_bytes_per_image
from icmflow.datasets.coco import normalise
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.datasets.readers import read_split
from icmflow.errors import ProblemLog
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.store import MaskStore
from tests.conftest import build, real_sample, save_codec
from tests.test_training import tiny_training


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
    store = MaskStore(build(dataset.data, tmp_path / "masks.zarr"))
    model, _, _, last = tiny_training(dataset, store.path, tmp_path, steps=3)  # object loss
    assert math.isfinite(last["loss"])
    model.eval().update(force=True)
    checkpoint = save_codec(model, tmp_path / "codec.pth.tar", {"N": 8, "M": 8})
    summary = encode_dataset(checkpoint, dataset, tmp_path / "coded")
    image = dataset.images[0]
    stream = (tmp_path / "coded" / "bitstreams" / f"{image['file_name'][:-4]}.bin").read_bytes()
    decoded = read_rgb(tmp_path / "coded" / "images" / f"{image['file_name'][:-4]}.png")
    np.testing.assert_array_equal(decoded, decompress_image(load_codec(checkpoint), stream))
    assert decoded.shape == (128, 256, 3)
    assert summary["bpp"] == 8 * len(stream) / (256 * 128)
    rows, metrics = evaluate_coded(
        dataset,
        PreparedDataset.load(tmp_path / "coded" / "annotations.json"),
        store,
        read_bytes_per_image(tmp_path / "coded"),
    )
    assert metrics["images_with_objects"] == 1 and math.isfinite(metrics["object_psnr"])
    assert 0 < rows[0]["object_fraction"] < 0.1
