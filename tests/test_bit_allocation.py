"""Bit-allocation maps: the bits the entropy coder spends per pixel, against the real bitstream."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from icmflow.evaluation.bit_allocation import bit_allocation, real_bits, write_bit_maps
from tests.helpers.codecs import textured_image, tiny_codec

FLUSH_BITS = 64
"""At most what rANS adds to a string beyond its symbols' bits: its 32-bit state, byte-aligned."""


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
@pytest.mark.parametrize(("height", "width"), [(128, 192), (100, 130)])
def test_the_map_sums_to_the_real_bits_but_the_coder_flush(arch, height, width):
    model = tiny_codec(arch, gain=20.0)  # large latents: many symbols escape the CDF tables
    rgb = textured_image(height, width)
    found = bit_allocation(model, rgb)
    assert found.source == "coder" and found.image.shape == (height, width)
    assert found.padded.shape == (128, 192) and (found.padded >= 0).all()
    real = real_bits(model, rgb)
    assert real > 10_000  # the latents carry the image: a sum worth checking
    assert found.total <= real <= found.total + 2 * FLUSH_BITS  # two strings: y and z


def test_a_codec_coding_past_the_entropy_models_gets_its_likelihood_map(monkeypatch):
    model = tiny_codec(gain=20.0)
    compress = model.compress

    def with_a_latent_of_its_own(x):
        output = compress(x)
        return {**output, "strings": [*output["strings"], [b"\x00"]]}

    monkeypatch.setattr(model, "compress", with_a_latent_of_its_own)
    rgb = textured_image(128, 128)
    found = bit_allocation(model, rgb)
    assert found.source == "likelihoods" and found.image.shape == (128, 128)
    assert 0.5 < found.total / real_bits(model, rgb) < 2


def test_the_maps_show_where_bits_go(tmp_path):
    """A flat half costs fewer bits than a textured half, and the difference map is signed."""
    rgb = textured_image(128, 128)
    rgb[:, :64] = 128
    first, second = tiny_codec(gain=20.0), tiny_codec(seed=1, gain=40.0)
    rows = write_bit_maps({"a": first, "b": second}, [("im", rgb)], tmp_path)
    bits = bit_allocation(first, rgb).image
    assert bits[:, :64].sum() < bits[:, 64:].sum()
    for name in ("a", "b", "difference"):
        png = np.asarray(Image.open(tmp_path / name / "im.png"))
        assert png.shape == (128, 128, 3)
    with (tmp_path / "bits.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    assert int(row["a_real_bits"]) == real_bits(first, rgb) == rows[0]["a_real_bits"]
    index = (tmp_path / "index.md").read_text()
    assert "a/im.png" in index and "b/im.png" in index and "difference/im.png" in index


def test_bits_inside_and_outside_the_object_masks(tmp_path):
    """With object masks, each row has the map's bits on the object pixels and index.md the
    bits per pixel inside and outside objects over all images."""
    images = [("flat", textured_image(128, 128)), ("textured", textured_image(64, 128, seed=3))]
    images[0][1][:, :64] = 128
    masks = {"flat": np.zeros((128, 128), bool), "textured": np.ones((64, 128), bool)}
    masks["flat"][:, 64:] = True  # the textured half
    first, second = tiny_codec(gain=20.0), tiny_codec(seed=1, gain=40.0)
    rows = write_bit_maps({"a": first, "b": second}, images, tmp_path, masks)
    inside, total = {"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}
    for row, (stem, rgb) in zip(rows, images, strict=True):
        assert row["object_pixels"] == masks[stem].sum()
        for name, model in (("a", first), ("b", second)):
            bits = bit_allocation(model, rgb).image
            assert row[f"{name}_object_bits"] == pytest.approx(bits[masks[stem]].sum())
            inside[name] += bits[masks[stem]].sum()
            total[name] += bits.sum()
    assert rows[0]["a_object_bits"] > rows[0]["a_map_bits"] / 2  # the textured half costs more
    index = (tmp_path / "index.md").read_text()
    assert "Bits inside and outside objects (2 images, 66.7% of their pixels in objects)" in index
    for name in ("a", "b"):
        outside = (total[name] - inside[name]) / (128 * 64)
        line = f"| {name} | {inside[name] / (2 * 128 * 64):.4f} | {outside:.4f} |"
        assert line in index and f"{inside[name] / total[name]:.1%} |" in index
    with (tmp_path / "bits.csv").open() as handle:
        assert "a_object_bits" in next(csv.reader(handle))


def test_bit_map_pairs_must_name_two_learned_codecs(tmp_path):
    import yaml

    from icmflow.pipeline.params import ParamsError, load_params
    from tests.helpers.project import REPO

    raw = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    assert load_params(REPO / "task-driven" / "params.yaml").bit_map_pairs() == {
        "task-2-vs-aux-2": ("task-2", "aux-2")
    }
    raw["bit_maps"]["pairs"] = [["task-2", "jpeg-q10"], ["aux-2", "aux-2"]]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert "['jpeg-q10'] are not learned codecs" in str(caught.value)
    assert "compares a codec with itself" in str(caught.value)
