"""Ahonen et al.'s ROI baseline: the latent outside the ROI divided by QF, the ROI map in the
bitstream, real round trips, and coded datasets whose ROIs are the object masks."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from icmflow.coding.bitstream import pack, unpack
from icmflow.coding.coded_dataset import coded_split, encode_dataset
from icmflow.coding.learned import LearnedCodec
from icmflow.coding.roi import RoiCodec, RoiCodecSpec, latent_roi, pack_roi, unpack_roi
from icmflow.core.errors import BitstreamError, MissingInputError
from icmflow.core.resume import file_digest
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.store import MaskStore
from tests.helpers.builders import save_codec
from tests.helpers.codecs import textured_image, tiny_codec

RGB = textured_image(100, 150)


@pytest.fixture(scope="module")
def model():
    return tiny_codec(gain=40)  # latents that carry the image


def box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    roi = np.zeros(RGB.shape[:2], dtype=bool)
    roi[top:bottom, left:right] = True
    return roi


def latent_strings(data: bytes) -> tuple[bytes, ...]:
    """The codec's own strings of an ROI bitstream (the ROI map aside)."""
    return unpack(data).strings[1:]


def test_round_trip_carries_the_latent_roi_and_bpp_counts_it(model):
    coded = RoiCodec(LearnedCodec(model), qf=1.4).encode_region(RGB, box(20, 40, 30, 90))
    stream = unpack(coded.data)
    # padded to 128×192, latent 8×12: rows 20..39 fall in latent rows 1-2, columns 30..89 in 1-5
    expected = np.zeros((8, 12), dtype=bool)
    expected[1:3, 1:6] = True
    np.testing.assert_array_equal(unpack_roi(stream.strings[0]), expected)
    without_map = pack(replace(stream, strings=stream.strings[1:]))
    assert len(coded.data) == len(without_map) + 1 + len(stream.strings[0])  # length varint
    decoder = RoiCodec(LearnedCodec(model), qf=1.4)  # needs the bitstream only
    np.testing.assert_array_equal(decoder.decode(coded.data), coded.decoded)
    assert coded.decoded.shape == RGB.shape


def roi_coded(model, qf: float, rgb: np.ndarray, roi: np.ndarray):
    return RoiCodec(LearnedCodec(model), qf).encode_region(rgb, roi)


def test_qf_divides_the_latent_outside_the_roi_only(model):
    rgb = textured_image(128, 192)  # no padding: every latent element covers image pixels
    plain = LearnedCodec(model).encode(rgb)
    everywhere = np.ones(rgb.shape[:2], dtype=bool)
    for qf, roi in ((4.0, everywhere), (1.0, ~everywhere)):  # nothing divided, or by 1
        assert latent_strings(roi_coded(model, qf, rgb, roi).data) == unpack(plain.data).strings
    sizes = {
        qf: sum(map(len, latent_strings(roi_coded(model, qf, rgb, ~everywhere).data)))
        for qf in (1.0, 1.4, 4.0)
    }
    assert sizes[4.0] < sizes[1.4] < sizes[1.0]  # a smaller background latent costs fewer bits
    roi = np.zeros(rgb.shape[:2], dtype=bool)
    roi[32:64, 48:96] = True
    errors = {
        qf: ((roi_coded(model, qf, rgb, roi).decoded.astype(float) - plain.decoded) ** 2)[~roi]
        for qf in (1.0, 4.0)
    }
    assert errors[1.0].max() == 0 and errors[4.0].mean() > 0  # QF 4 changes the background


def test_a_damaged_or_foreign_roi_map_is_an_error_not_an_image(model):
    codec = RoiCodec(LearnedCodec(model), qf=1.4)
    coded = codec.encode_region(RGB, box(20, 40, 30, 90))
    stream = unpack(coded.data)
    other = pack_roi(~unpack_roi(stream.strings[0]))  # a valid map of another region
    for damaged, message in (
        (other, "decoded pixels differ"),
        (stream.strings[0][:3], "ROI map is damaged"),
        (pack_roi(np.ones((4, 4), dtype=bool)), r"ROI map is \(4, 4\)"),
    ):
        data = pack(replace(stream, strings=(damaged, *stream.strings[1:])))
        with pytest.raises(BitstreamError, match=message):
            codec.decode(data, source="x.bin")
    with pytest.raises(BitstreamError, match="decoded pixels differ"):  # QF is the codec's
        RoiCodec(LearnedCodec(model), qf=2.0).decode(coded.data)
    with pytest.raises(ValueError, match="QF must be at least 1"):
        RoiCodec(LearnedCodec(model), qf=0.5)


def test_coded_dataset_takes_each_images_roi_from_its_object_mask(
    model, sample_prepared, sample_masks, tmp_path
):
    val = sample_prepared["val"]
    checkpoint = save_codec(model, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    spec = RoiCodecSpec(
        str(checkpoint), file_digest(checkpoint), 1.4, (("val", str(sample_masks["val"])),), "x"
    )
    out = tmp_path / "coded"
    summary = encode_dataset(spec, {"val": val}, out)["val"]
    coded = PreparedDataset.load(coded_split(out, "val"))
    store, decoder = MaskStore(sample_masks["val"]), spec.build()
    with (out / "bpp" / "val.csv").open() as handle:
        rows = {int(r["image_id"]): r for r in csv.DictReader(handle)}
    with_objects = 0
    for image in coded.images:
        stem = image["file_name"].removesuffix(".png")
        data = (out / "bitstreams" / "val" / f"{stem}.bin").read_bytes()
        np.testing.assert_array_equal(read_rgb(coded.image_path(image)), decoder.decode(data))
        mask = torch.from_numpy(store.mask(image["id"]))
        h, w = mask.shape
        padded = torch.nn.functional.pad(mask.float(), (0, -w % 64, 0, -h % 64))
        expected = latent_roi(padded, (padded.shape[0] // 16, padded.shape[1] // 16))
        with_objects += int(expected.any())
        np.testing.assert_array_equal(unpack_roi(unpack(data).strings[0]), expected.numpy())
        assert int(rows[image["id"]]["bytes"]) == len(data)  # the ROI map counted
    assert with_objects >= 2  # ROIs that are not empty
    bits = 8 * sum(p.stat().st_size for p in (out / "bitstreams" / "val").iterdir())
    assert summary["total_bits"] == bits


def test_a_mask_store_of_other_images_is_named(model, sample_prepared, sample_masks, tmp_path):
    checkpoint = save_codec(model, tmp_path / "codec.pth.tar", {"N": 16, "M": 16})
    train_masks = (("val", str(sample_masks["train"])),)  # the train split's masks for val
    spec = RoiCodecSpec(str(checkpoint), file_digest(checkpoint), 1.4, train_masks, "x")
    with pytest.raises(MissingInputError, match=r"no mask for image id .*run `icmflow masks`"):
        encode_dataset(spec, {"val": sample_prepared["val"]}, tmp_path / "coded")
