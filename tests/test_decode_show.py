"""`icmflow decode` (bitstreams back to PNGs, any family, layered too) and `icmflow show`
(masks over their images, coded images beside their originals)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from icmflow.codecs.checkpoint import load_codec
from icmflow.codecs.scalable import build_scalable, save_scalable
from icmflow.coding.layered import LayeredCodec
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.masks.overlay import OBJECT_COLOUR
from icmflow.masks.store import MaskStore
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.builders import save_codec
from tests.helpers.codecs import TCM_TINY, textured_image, tiny_codec
from tests.helpers.project import REPO

runner = CliRunner()
LEARNED, JPEG = "meanscale-object-1", "jpeg-q25"
ARGS = {"N": 16, "M": 16}


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    return result.output


@pytest.fixture(scope="module")
def project(sample_prepared, tmp_path_factory):
    """A project whose `encode` stage coded the sample's val split with a tiny learned codec
    (as `meanscale-object-1`) and with JPEG."""
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["encode"]["n_workers"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    paths = Paths(root)
    val = sample_prepared["val"]
    final = paths.prepared("sample")
    write_prepared(final / "val.json", val.data, image_root=val.image_root, final_dir=final)
    save_codec(tiny_codec(gain=8.0, **ARGS), paths.checkpoint(LEARNED), ARGS)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        invoke("encode", LEARNED)
        invoke("encode", JPEG)
    return root


@pytest.fixture
def inside(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def coded_images(codec: str) -> dict[str, np.ndarray]:
    folder = Paths().coded(codec) / "images" / "val"
    return {p.name: read_rgb(p) for p in sorted(folder.glob("*.png"))}


def test_decode_coded_datasets_gives_their_pngs(inside):
    output = invoke("decode", f"data/coded/{LEARNED}", f"data/coded/{JPEG}", "--out", "d")
    for codec in (LEARNED, JPEG):
        expected = coded_images(codec)
        decoded = {p.name: read_rgb(p) for p in sorted((inside / "d" / codec / "val").iterdir())}
        assert decoded.keys() == expected.keys() and len(expected) == 5
        for name, rgb in expected.items():
            np.testing.assert_array_equal(decoded[name], rgb)
    assert "decoded 10 file(s)" in output


def test_decode_single_files_with_a_checkpoint_or_by_suffix(inside, tmp_path):
    bitstreams = Paths().coded(LEARNED) / "bitstreams" / "val"
    first = sorted(bitstreams.iterdir())[0]
    shutil.copy(first, tmp_path / "a.bin")
    jpeg = sorted((Paths().coded(JPEG) / "bitstreams" / "val").iterdir())[0]
    shutil.copy(jpeg, tmp_path / "a.jpg")
    checkpoint = str(Paths().checkpoint(LEARNED))
    invoke("decode", str(tmp_path / "a.bin"), "--codec", checkpoint, "--out", "one")
    invoke("decode", str(tmp_path / "a.jpg"), "--out", "two")  # a JPEG file needs no codec
    expected = coded_images(LEARNED)[first.with_suffix(".png").name]
    np.testing.assert_array_equal(read_rgb(inside / "one" / "a.png"), expected)
    np.testing.assert_array_equal(
        read_rgb(inside / "two" / "a.png"), coded_images(JPEG)[jpeg.with_suffix(".png").name]
    )
    assert "say which codec decodes it" in fails("decode", str(tmp_path / "a.bin"))
    other = save_codec(tiny_codec(seed=1, gain=8.0, **ARGS), tmp_path / "other.pth.tar", ARGS)
    message = fails("decode", str(tmp_path / "a.bin"), "--codec", str(other), "--out", "x")
    assert "a.bin: the entropy decoder's scale indexes differ" in message
    assert not (inside / "x" / "a.png").exists()
    assert "checkpoint not found" in fails("decode", str(first), "--codec", "models/no.pth.tar")


MACHINE = TCM_TINY | {"M": 48, "num_slices": 3, "z_channels": 16, "attention_dim": 16}
MACHINE["slice_hidden"] = [24, 16]


def test_decode_layered_bitstreams_of_a_scalable_codec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    machine = save_codec(
        tiny_codec("tcm", seed=0, gain=10.0, **MACHINE), tmp_path / "m.pth.tar", MACHINE, "tcm"
    )
    model = build_scalable(load_codec(machine), "dc", None, "bmshj2018-hyperprior", ARGS, seed=0)
    model.update(force=True)
    optimizer = torch.optim.Adam(model.human.parameters())
    human = tmp_path / "h.pth.tar"
    save_scalable(
        human, model, machine, step=0, loss=0.0, optimizer=optimizer, aux_optimizer=optimizer
    )
    coded = LayeredCodec(model).encode_layers(textured_image(40, 56, seed=3))
    for folder, data in (("machine", coded.machine), ("human", coded.additional)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "im.bin").write_bytes(data)
    args = ("decode", "human/im.bin", "--codec", str(human), "--machine", str(machine))
    invoke(*args, "--machine-bitstreams", "machine", "--out", "out")
    np.testing.assert_array_equal(read_rgb(tmp_path / "out" / "im.png"), coded.human_image)
    assert "decodes with its machine-layer file" in fails(*args, "--out", "out2")
    invoke("decode", "machine/im.bin", "--codec", str(machine), "--out", "out3")
    np.testing.assert_array_equal(read_rgb(tmp_path / "out3" / "im.png"), coded.machine_image)
    # in coded datasets: the scalable codec's layers.json names its machine layer's dataset
    for name, data in (("tcm", coded.machine), ("dc", coded.additional)):
        (Paths().coded(name) / "bitstreams" / "val").mkdir(parents=True)
        (Paths().coded(name) / "bitstreams" / "val" / "im.bin").write_bytes(data)
    (Paths().coded("dc") / "layers.json").write_text('{"machine": "tcm"}')
    invoke("decode", "data/coded/dc", "--codec", str(human), "--machine", str(machine))
    decoded = read_rgb(tmp_path / "decoded" / "dc" / "val" / "im.png")
    np.testing.assert_array_equal(decoded, coded.human_image)


def test_show_masks_draws_each_mask_over_its_image(sample_masks, sample_prepared, tmp_path):
    invoke("show", str(sample_masks["val"]), "--images", "3", "--out", str(tmp_path / "s"))
    store, val = MaskStore(sample_masks["val"]), sample_prepared["val"]
    assert len(list((tmp_path / "s").iterdir())) == 3
    masked = 0
    for image in val.images[:3]:
        rgb = read_rgb(val.image_path(image))
        mask = store.mask(image["id"])
        picture = read_rgb(tmp_path / "s" / Path(image["file_name"]).with_suffix(".png"))
        height, width = rgb.shape[:2]
        assert picture.shape[1] == 2 * width + 4
        left, right = picture[-height:, :width], picture[-height:, width + 4 :]
        np.testing.assert_array_equal(left, rgb)
        np.testing.assert_array_equal(right[~mask], rgb[~mask])
        distance = np.abs(right[mask].astype(int) - OBJECT_COLOUR).sum(axis=1)  # nearer red
        assert (distance < np.abs(rgb[mask].astype(int) - OBJECT_COLOUR).sum(axis=1)).all()
        masked += int(mask.any())
    assert masked


def test_show_coded_puts_each_image_beside_its_original(inside):
    output = invoke("show", f"data/coded/{JPEG}", "--images", "2")
    folder = inside / "shown" / f"coded-{JPEG}-val"
    assert str(folder) in output or "shown/" in output
    pictures = sorted(folder.iterdir())
    assert len(pictures) == 2
    val = PreparedDataset.load(Paths().prepared_split("sample", "val"))
    for picture, image in zip(pictures, val.images, strict=False):
        rgb, shown = read_rgb(val.image_path(image)), read_rgb(picture)
        height, width = rgb.shape[:2]
        assert shown.shape[1] == 3 * width + 8
        np.testing.assert_array_equal(shown[-height:, :width], rgb)
        decoded = coded_images(JPEG)[picture.name]
        np.testing.assert_array_equal(shown[-height:, width + 4 : 2 * width + 4], decoded)
    assert "not a mask store" in fails("show", "params.yaml")
