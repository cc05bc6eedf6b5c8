"""The SAM stages through the CLI with a randomly initialised vit_b (the real architecture).

vit_b's encoder always works at 1024×1024 (about 25 s per image on 2 CPU cores), so the project
here has one image: `icmflow edges` and `icmflow masks` with `masks.source: sam-boxes` each run
the encoder once, and an `edge` codec trains on the edge store; `dvc repro` runs edges@ once,
with SA-ICM's Canny edges.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO
from typer.testing import CliRunner

from icmflow.masks.store import MaskStore, store_attrs
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from icmflow.vision.sam.model import SamSpec, build_model
from tests.helpers.builders import box_union
from tests.helpers.dvc import copy_project, ran_stages, run, status
from tests.helpers.params import learned_entry
from tests.helpers.project import REPO

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory) -> str:
    """A vit_b state dict with random weights, saved like the official checkpoints."""
    path = tmp_path_factory.mktemp("sam") / "random_vit_b.pth"
    torch.save(build_model(SamSpec("vit_b"), torch.device("cpu")).state_dict(), path)
    return str(path)


def one_image_dataset(root: Path, sample_root: Path) -> tuple[dict, list[dict], dict]:
    """`root/one/`: the first annotated val image of the sample with its annotations; the image,
    its annotations and params.yaml (the project's) with dataset `one` and its edges enabled."""
    coco = json.loads((sample_root / "annotations" / "instances_val.json").read_text())
    image = next(im for im in coco["images"] if im["id"] == coco["annotations"][0]["image_id"])
    coco["images"] = [image]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    (root / "one" / "images").mkdir(parents=True)
    (root / "one" / "instances.json").write_text(json.dumps(coco))
    shutil.copy2(sample_root / "val" / image["file_name"], root / "one" / "images")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["one"] = {
        "format": "coco",
        "root": "one",
        "splits": {"val": {"annotations": "instances.json", "images": "images"}},
    }
    params["masks"].update(n_workers=1, threads_per_worker=2, images_per_shard=1)
    params["edges"].update(
        datasets=["one"], points_per_side=4, alpha=0.0, stability_score_thresh=0.0
    )
    return image, coco["annotations"], params


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root, vit_b_checkpoint):
    """Params with a one-image dataset `one` whose edges and SAM box masks are enabled."""
    image, annotations, params = one_image_dataset(tmp_path, sample_root)
    params["sam"].update(checkpoint=vit_b_checkpoint)
    params["train"].update(
        dataset="one",
        split="val",
        steps=2,
        batch_size=1,
        patch_size=64,
    )
    params["codecs"] = {"mse-1": learned_entry("mse"), "edge-1": learned_entry("edge")}
    params["tasks"] = {}
    params["report"]["anchors"] = ["bmshj2018-hyperprior-mse"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["prepare", "one"]).exit_code == 0
    return tmp_path, image, annotations


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_edges_stage_then_edge_codec_training(project):
    root, image, _ = project
    invoke("edges", "one")
    store = MaskStore(Paths().mask_store("edge", "one", "val"))
    assert store.attrs["kind"] == "edge" and store.attrs["sam"]["model_type"] == "vit_b"
    assert store.attrs["sam"]["checkpoint"] == "random_vit_b.pth"
    assert store.image_ids == [image["id"]]
    edges = store.mask(image["id"])
    assert edges.shape == (image["height"], image["width"]) and edges.dtype == bool
    provenance = json.loads((Paths().masks("edge", "one") / "provenance.json").read_text())
    assert provenance["stage"] == "edges@one" and provenance["params"]["edges"]["edge_width"] == 1
    assert not (root / "data" / ".work" / "edges" / "one").exists()

    invoke("train", "edge-1")
    assert Paths().checkpoint("edge-1").is_file()
    assert json.loads((Paths().model("edge-1") / "provenance.json").read_text())


def set_params(**sections: dict) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_masks_stage_from_sam_boxes(project):
    _, image, _ = project
    set_params(masks={"source": "sam-boxes"})
    invoke("masks", "one")
    path = Paths().mask_store("object", "one", "val")
    assert store_attrs(path)["from"] == "sam-boxes"
    mask = MaskStore(path).mask(image["id"])
    assert mask.shape == (image["height"], image["width"])
    coco = COCO(str(Paths().prepared_split("one", "val")))
    assert not (mask & ~box_union(coco, image["id"], include_crowd=True)).any()


def test_missing_checkpoint_names_the_param(project):
    set_params(sam={"checkpoint": "models/sam/sam_vit_b_01ec64.pth"})
    result = runner.invoke(app, ["edges", "one"])
    assert result.exit_code == 1
    assert "params.yaml sam.checkpoint" in result.output and "no such file" in result.output
    assert "sam_vit_h_4b8939.pth" in result.output
    assert not Paths().masks("edge", "one").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"precision": "float16", "device": "cpu"}, "sam.precision float16 needs a CUDA device"),
        pytest.param(
            {"device": "cuda"},
            "sam.device is cuda but no CUDA device is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_impossible_device_settings_are_named(project, values, message):
    set_params(sam=values, masks={"source": "sam-boxes"})
    for stage in ("edges", "masks"):
        result = runner.invoke(app, [stage, "one"])
        assert result.exit_code == 1 and message in result.output


def test_dvc_repro_draws_sa_icm_canny_edges_at_alpha(tmp_path, sample_root, vit_b_checkpoint):
    root = copy_project(tmp_path / "project")
    image, _, params = one_image_dataset(root, sample_root)
    params["sam"].update(checkpoint=vit_b_checkpoint)
    params["edges"].update(method="canny", alpha=0.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["icmflow", "pipeline"], root)
    assert "edges@one" in ran_stages(run(["dvc", "repro", "edges@one"], root).stdout)
    store = MaskStore(Paths(root).mask_store("edge", "one", "val"))
    assert store.attrs["edges"]["method"] == "canny"
    assert store.attrs["edges"]["pred_iou_thresh"] == 0.0  # α is SAM's predicted-IoU threshold
    assert store.mask(image["id"]).shape == (image["height"], image["width"])
    assert "edges@one" not in status(root)
    params["edges"]["alpha"] = 0.78  # one of SA-ICM's released settings
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "edges@one" in status(root)  # DVC tracks α
