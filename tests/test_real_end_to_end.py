"""A real Cityscapes frame through the whole library: read, mask, train a tiny codec, code it."""

from __future__ import annotations

import math

import numpy as np

from icmflow.codecs.checkpoint import load_codec
from icmflow.coding.coded_dataset import coded_split, encode_dataset, read_bytes_per_image
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.store import MaskStore
from tests.helpers.builders import build, save_codec, tiny_training
from tests.helpers.codecs import learned_spec
from tests.helpers.project import real_sample


def test_train_and_encode_a_real_sample(tmp_path):
    root = real_sample("cityscapes-frankfurt1")
    images = root / "leftImg8bit" / "val"
    problems = ProblemLog("raise")
    raw = FORMATS["cityscapes"].read(root / "gtFine" / "val", images, problems)
    write_prepared(
        tmp_path / "val.json",
        normalise(raw, images, problems),
        image_root=images,
        final_dir=tmp_path,
    )
    dataset = PreparedDataset.load(tmp_path / "val.json")
    store = MaskStore(build(dataset.data, tmp_path / "masks.zarr"))
    result = tiny_training(dataset, store.path, tmp_path, steps=3)  # object objective
    model = result.model
    assert math.isfinite(result.last["loss"])
    model.eval().update(force=True)
    checkpoint = save_codec(model, tmp_path / "codec.pth.tar", {"N": 8, "M": 8})
    coded = tmp_path / "coded"
    summary = encode_dataset(learned_spec(checkpoint), {"val": dataset}, coded)["val"]
    image = dataset.images[0]
    stream = (coded / "bitstreams" / "val" / f"{image['file_name'][:-4]}.bin").read_bytes()
    decoded = read_rgb(coded / "images" / "val" / f"{image['file_name'][:-4]}.png")
    np.testing.assert_array_equal(decoded, LearnedCodec(load_codec(checkpoint)).decode(stream))
    assert decoded.shape == (128, 256, 3)
    assert summary["bpp"] == 8 * len(stream) / (256 * 128)
    rows, metrics = evaluate_coded(
        dataset,
        PreparedDataset.load(coded_split(coded, "val")),
        store,
        read_bytes_per_image(coded, "val"),
    )
    assert metrics["images_with_objects"] == 1 and math.isfinite(metrics["object_psnr"])
    assert 0 < rows[0]["object_fraction"] < 0.1
