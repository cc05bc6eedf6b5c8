"""Scalable coding with feature fusion (icmflow/codecs/scalable.py, icmflow/coding/layered.py):
the fusion of eqs. 6-7, training with a frozen machine layer, layered bitstreams, params."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from icmflow.codecs.checkpoint import load_codec
from icmflow.codecs.scalable import (
    AdditionalInformationCodec,
    ScalableCodec,
    build_scalable,
    load_scalable,
    save_scalable,
)
from icmflow.coding.layered import LayeredCodec
from icmflow.coding.learned import LearnedCodec, to_uint8
from icmflow.core.errors import BitstreamError, CheckpointError
from icmflow.evaluation.report import parameters_table, psnr_table
from icmflow.pipeline.params import ParamsError, check_registered, is_scalable, load_params
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, read_log, train_codec
from tests.helpers.builders import save_codec
from tests.helpers.codecs import TCM_TINY, textured_image, tiny_codec, to_batch
from tests.helpers.dvc import copy_project, run
from tests.helpers.project import REPO

MACHINE = TCM_TINY | {
    "M": 48,
    "num_slices": 3,
    "z_channels": 16,
    "attention_dim": 16,
    "slice_hidden": [24, 16],
}
"""A tiny machine TCM: 3 slices of 16 channels."""
HUMAN = {k: v for k, v in MACHINE.items() if k not in ("M", "num_slices")}
DC = {"N": 8, "M": 8}
"""The DC model's residual codec: a tiny bmshj2018-hyperprior."""


@pytest.fixture(scope="module")
def machine_checkpoint(tmp_path_factory):
    machine = tiny_codec("tcm", seed=0, gain=10.0, **MACHINE)
    return save_codec(machine, tmp_path_factory.mktemp("machine") / "m.pth.tar", MACHINE, "tcm")


def scalable(machine_checkpoint, mode: str = "fusion", m: int | None = 2) -> ScalableCodec:
    arch, args = ("bmshj2018-hyperprior", DC) if mode == "dc" else (None, HUMAN)
    return build_scalable(load_codec(machine_checkpoint), mode, m, arch, args, seed=0)


@pytest.fixture(scope="module", params=["fusion", "dc"])
def trained(request, machine_checkpoint, sample_prepared, tmp_path_factory):
    """A few training steps on the sample, and the machine layer's weights before them."""
    model = scalable(machine_checkpoint, request.param)
    before = {k: v.clone() for k, v in model.machine.state_dict().items()}
    log = tmp_path_factory.mktemp("log") / "log.csv"
    result = train_codec(
        model,
        OBJECTIVES["scalable"](lmbda=0.01),
        TrainingCrops(sample_prepared["train"], {}, 64),
        TrainSettings(steps=3, batch_size=2, lr=1e-3, aux_lr=1e-3),
        log_path=log,
    )
    model = result.model.eval()
    model.update(force=True)
    return model, before, read_log(log)


def test_fusion_adds_the_first_m_slices_only():
    human = AdditionalInformationCodec(m=2, slice_channels=16, fused_channels=48, **HUMAN)
    y_machine, y_additional = torch.randn(1, 48, 4, 4), torch.randn(1, 32, 4, 4)
    fused = human.fuse(y_machine, y_additional)
    torch.testing.assert_close(fused[:, :32], y_machine[:, :32] + y_additional)
    assert torch.equal(fused[:, 32:], y_machine[:, 32:])
    assert human.g_s[0].subpel_conv[0].in_channels == 48  # g_s decodes all n slices
    assert human.h_a[0].conv1.in_channels == 32  # its own latent: m slices


def test_training_never_touches_the_frozen_machine_layer(trained):
    model, before, rows = trained
    after = model.machine.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in model.machine.parameters())
    assert len(rows) == 3 and {"loss", "bpp", "mse", "machine_bpp"} <= set(rows[0])
    assert len({r["machine_bpp"] for r in rows}) > 1 or rows[0]["machine_bpp"] > 0
    model.train()
    assert model.training and model.human.training and not model.machine.training


@pytest.mark.parametrize("mode", ["fusion", "dc"])
def test_gradients_reach_the_human_layer_only(machine_checkpoint, mode):
    model = scalable(machine_checkpoint, mode).train()
    x = to_batch(textured_image(64, 64))
    terms = OBJECTIVES["scalable"](lmbda=0.01)(model(x), {"x": x})
    terms["loss"].backward()
    assert all(p.grad is None for p in model.machine.parameters())
    encoder = next(model.human.g_a.parameters()).grad
    assert encoder is not None and encoder.abs().sum() > 0  # the encoder learns through g_s
    assert terms["machine_bpp"].requires_grad is False


@pytest.mark.parametrize("size", [(50, 70), (64, 64)])
def test_layered_bitstreams(trained, machine_checkpoint, size):
    model, _, _ = trained
    codec = LayeredCodec(model)
    rgb = textured_image(*size, seed=1)
    coded = codec.encode_layers(rgb)
    machine_alone = LearnedCodec(load_codec(machine_checkpoint))
    assert coded.machine == machine_alone.encode(rgb).data  # the machine codec's own file
    machine_image = codec.decode_machine(coded.machine)  # no additional file needed
    assert np.array_equal(machine_image, machine_alone.decode(coded.machine))
    assert np.array_equal(machine_image, coded.machine_image)
    human = codec.decode(coded.additional, coded.machine)
    assert human.shape == rgb.shape and np.array_equal(human, coded.human_image)
    assert coded.bits() == {
        "machine": 8 * len(coded.machine),
        "additional": 8 * len(coded.additional),
        "total": 8 * (len(coded.machine) + len(coded.additional)),
    }
    with torch.no_grad():  # decoding gives what the eval forward pass reconstructs
        assert np.array_equal(human, to_uint8(model(to_batch(rgb))["x_hat"]))
    other = codec.encode_layers(textured_image(*size, seed=2)).machine
    with pytest.raises(BitstreamError, match="another machine-layer file"):
        codec.decode(coded.additional, other)


def test_checkpoint_keeps_the_human_layer_and_its_machine(trained, machine_checkpoint, tmp_path):
    model, _, _ = trained
    optimizer = torch.optim.Adam(model.human.parameters())
    fields = dict(step=3, loss=0.0, optimizer=optimizer, aux_optimizer=optimizer)
    path = tmp_path / "human.pth.tar"
    save_scalable(path, model, machine_checkpoint, **fields)
    record = torch.load(path, weights_only=False)
    assert not any(key.startswith("machine.") for key in record["state_dict"])
    assert record["icmflow"]["human_parameters"] == model.human_parameters()
    loaded = load_scalable(path, machine_checkpoint)
    rgb = textured_image(40, 56)
    assert LayeredCodec(loaded).encode(rgb).data == LayeredCodec(model).encode(rgb).data
    other = save_codec(tiny_codec("tcm", seed=1, **MACHINE), tmp_path / "o.pth.tar", MACHINE, "tcm")
    with pytest.raises(CheckpointError, match="another machine layer"):
        load_scalable(path, other)


TABLE_I = {1: 45.9, 2: 51.7, 3: 58.7, 4: 67.0, 5: 76.6}
"""The paper's Table I: parameters (M) of the additional-information codec (N=128, n=5 of 64)."""


def test_table_one_parameter_counts():
    counts = {
        m: sum(p.numel() for p in AdditionalInformationCodec(m, 64, 320, N=128).parameters())
        for m in TABLE_I
    }
    assert {m: round(n / 1e6, 1) for m, n in counts.items()} == TABLE_I
    assert counts[5] == 76_568_148  # TCM N=128 itself: at m = n nothing is saved


def test_report_tables_over_m():
    rows = [
        {"series": f"fusion-m{m}", "mode": "fusion", "m": m, "setting": f"λ={lmbda:g}"}
        | {"human_parameters": 1e6 * m, "psnr": 30 + m + 100 * lmbda}
        for m, lmbda in ((1, 0.01), (3, 0.01), (3, 0.005), (3, 0.02))
    ]
    sizes = parameters_table(rows).splitlines()
    assert sizes[2:] == [
        "| fusion-m1 | fusion | 1 | 1.0000 |",
        "| fusion-m3 | fusion | 3 | 3.0000 |",
    ]
    psnr = psnr_table(rows).splitlines()
    assert psnr[0] == "| λ | fusion-m1 | fusion-m3 |"
    assert psnr[2:] == [
        "| λ=0.005 | – | 33.5000 |",
        "| λ=0.01 | 32.0000 | 34.0000 |",
        "| λ=0.02 | – | 35.0000 |",
    ]


PAPERS = REPO / "papers" / "params.yaml"


def edited_papers(tmp_path, change):
    raw = yaml.safe_load(PAPERS.read_text())
    change(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_papers_params_are_valid():
    params = load_params(PAPERS)
    check_registered(params)
    assert {"fusion-m1", "dc-1", "tcm-object"} <= set(params.trained_codecs)


TABLE_II = {
    # the scalable paper's Table II: the (m, λ) cells it reports PSNR for ("-" elsewhere)
    1: (0.01,),
    2: (0.01,),
    3: (0.005, 0.01, 0.02, 0.03),
    4: (0.005, 0.01, 0.02, 0.03),
    5: (0.005, 0.01, 0.02, 0.03),
}


def test_papers_params_hold_table_iis_grid():
    params = load_params(PAPERS)
    fusion = [e for e in params.codecs.values() if is_scalable(e) and e.mode == "fusion"]
    cells = sorted((e.m, e.lmbda) for e in fusion)
    assert cells == sorted((m, lmbda) for m, lambdas in TABLE_II.items() for lmbda in lambdas)
    assert {e.machine for e in fusion} == {"tcm-object"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["fusion-m1"].update(m=6),
            "codecs.fusion-m1.m: m=6 is more than the machine layer's num_slices=5",
        ),
        (lambda c: c["fusion-m1"].update(machine="jpeg-q10"), "'jpeg-q10' is a jpeg codec"),
        (lambda c: c["fusion-m1"].update(machine="nope"), "'nope' is not under codecs"),
        (lambda c: c["fusion-m1"].pop("m"), "mode fusion needs m"),
        (lambda c: c["dc-1"].pop("arch"), "mode dc needs arch"),
        (lambda c: c["fusion-m1"]["model_args"].update(M=64), "model_args M follow from"),
        (
            lambda c: c["fusion-m1"].update(train={"split": "test"}),
            "codecs.fusion-m1.train.split: 'test' is not a split",
        ),
        (
            lambda c: c["tcm-object"].update(arch="bmshj2018-hyperprior", model_args={}),
            "which is not channel-sliced",
        ),
    ],
)
def test_bad_scalable_entries_are_clear_params_errors(tmp_path, change, message):
    path = edited_papers(tmp_path, lambda raw: change(raw["codecs"]))
    with pytest.raises(ParamsError, match="invalid") as caught:
        check_registered(load_params(path))
    assert message in str(caught.value)


@pytest.mark.slow
def test_papers_params_run_through_dvc_repro(tmp_path):
    """papers/params.yaml, shrunk to tiny size, through `icmflow pipeline` and `dvc repro`."""
    root = copy_project(tmp_path)
    keep = ("tcm-object", "fusion-m1", "jpeg-q10")  # the DC model: the unit tests above

    def tiny(raw):
        raw["sample"].update(train_images=4, val_images=2)
        raw["masks"].update(n_workers=1)
        raw["train"].update(steps=2, batch_size=2)
        raw["codecs"] = {name: raw["codecs"][name] for name in keep}
        raw["encode"].update(n_workers=1)
        raw["tasks"] = {}
        raw["report"]["anchors"] = ["jpeg"]

    papers = root / "papers"
    edited_papers(papers, tiny)
    run(["icmflow", "--params", "papers/params.yaml", "pipeline"], root)
    assert (papers / "dvc.yaml").is_file()
    run(["dvc", "repro"], papers, pythonpath=root)
    report = papers / "results" / "report"
    table = (report / "scalable.md").read_text()
    assert "fusion-m1" in table and "Table I" in table and "Table II" in table
    assert (report / "scalable_psnr_bpp.png").is_file()
    metrics = json.loads((papers / "results/metrics/fusion-m1/metrics.json").read_text())
    machine = json.loads((papers / "results/metrics/tcm-object/metrics.json").read_text())
    assert metrics["machine_bpp"] == pytest.approx(machine["bpp"])
    assert metrics["bpp"] == pytest.approx(metrics["machine_bpp"] + metrics["additional_bpp"])
    assert metrics["layers"]["m"] == 1 and metrics["layers"]["machine"] == "tcm-object"
    stages = yaml.safe_load((papers / "dvc.yaml").read_text())["stages"]
    train_deps = stages["train"]["foreach"]["fusion-m1"].values()
    assert "models/tcm-object/checkpoint.pth.tar" in train_deps
