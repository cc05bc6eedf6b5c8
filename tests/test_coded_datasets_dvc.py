"""`dvc repro` of a project with two coded datasets (the sample for machines, its val images as
photos for humans): stages of their own, a report set each, reruns of exactly what an edit
touches; and `dvc repro --dry` on a fresh clone and after a failed pipeline check."""

from __future__ import annotations

import pytest

from tests.helpers.dvc import (
    copy_project,
    missing_code,
    ran_stages,
    resolved_stages,
    run,
    status,
)
from tests.helpers.params import edit_params
from tests.helpers.project import REPO

pytestmark = pytest.mark.slow

CODECS = {f"jpeg-q{q}": {"family": "jpeg", "quality": q} for q in (10, 40)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("project"))

    def tiny(params):
        params["sample"].update(train_images=4, val_images=3)
        photos = {
            "format": "images",
            "root": "data/sample/coco/val",
            "splits": {"all": {"images": "."}},
        }
        params["datasets"] = {"sample": params["datasets"]["sample"], "photos": photos}
        params["masks"].update(images_per_shard=2, n_workers=1)
        params["codecs"] = CODECS
        params["encode"].update(train_split=None, n_workers=1, datasets={"photos": {}})
        params["tasks"] = {}
        params["report"]["anchors"] = ["jpeg"]

    edit_params(root, tiny)
    # a fresh clone, dvc.yaml not yet written for these params: the plan of everything
    run(["icmflow", "pipeline"], root)
    planned = ran_stages(run(["dvc", "repro", "--dry", "--force-downstream"], root).stdout)
    assert planned == set(run(["dvc", "stage", "list", "--names-only"], root).stdout.split())
    assert "encode-photos@jpeg-q10" in planned
    assert "report" in ran_stages(run(["dvc", "repro"], root).stdout)
    return root


def test_both_coded_datasets_are_reported(project):
    report = project / "results" / "report"
    assert (report / "rd.md").read_text().count("jpeg-q") == 2
    assert "[photos](photos/rd.md)" in (report / "rd.md").read_text()
    assert len((report / "photos" / "rd.csv").read_text().splitlines()) == 1 + len(CODECS)
    assert (project / "data" / "coded-photos" / "jpeg-q10" / "bpp" / "all.csv").is_file()


def test_every_stage_depends_on_the_code_it_runs(project, monkeypatch):
    monkeypatch.chdir(project)  # DVC names stages relative to the working directory
    assert missing_code(resolved_stages(project), REPO) == {}  # the same relative paths


def test_editing_one_coded_dataset_reruns_its_stages_only(project):
    """Its stages and the report, nothing of the other dataset. The edit also makes dvc.yaml
    stale, which stops `dvc repro` (the check fails); once `icmflow pipeline` wrote it again,
    `dvc repro --dry` plans: the check's marker, which every stage depends on, is still there."""
    assert status(project) == set()

    def photos(params):
        params["encode"]["datasets"]["photos"].update(split="all", codecs=["jpeg-q10"])

    edit_params(project, photos)
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0 and "does not match" in result.stderr + result.stdout
    run(["icmflow", "pipeline"], project)
    changed = {"pipeline", "report", "encode-photos@jpeg-q10", "evaluate-photos@jpeg-q10"}
    assert status(project) == changed
    assert ran_stages(run(["dvc", "repro", "--dry"], project).stdout) == changed
