import numpy as np
import pytest
import torch
from compressai.losses import RateDistortionLoss as CompressAILoss
from compressai.models import ScaleHyperprior

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import load_codec
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import UnknownNameError
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.build import build_store
from icmflow.masks.store import pack
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES, Objective, rate_bpp
from icmflow.training.trainer import (
    DivergedError,
    TrainSettings,
    configure_optimizers,
    read_log,
    train_codec,
)
from tests.helpers.builders import save_trained, tiny_training


def fake_output(n=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x_hat": torch.rand(n, 3, h, w, generator=g),
        "likelihoods": {"y": torch.rand(n, 8, 4, 4, generator=g).clamp(0.01, 1)},
    }, torch.rand(n, 3, h, w, generator=g)


def test_mse_objective_is_compressai_loss():
    output, x = fake_output()
    ours = OBJECTIVES["mse"](lmbda=0.013)(output, {"x": x})
    theirs = CompressAILoss(lmbda=0.013)(output, x)
    torch.testing.assert_close(ours["loss"], theirs["loss"])
    torch.testing.assert_close(ours["bpp"], theirs["bpp_loss"])


@pytest.mark.parametrize("kind", ["object", "edge"])
def test_masked_objectives_full_mask_equals_mse_and_empty_mask_is_rate_only(kind):
    output, x = fake_output()
    plain = OBJECTIVES["mse"](lmbda=0.05)(output, {"x": x})
    masked = OBJECTIVES[kind](lmbda=0.05)
    assert masked.mask_kinds == (kind,)
    full = masked(output, {"x": x, kind: torch.ones(2, 1, 16, 16)})
    torch.testing.assert_close(full["loss"], plain["loss"])
    empty = masked(output, {"x": x, kind: torch.zeros(2, 1, 16, 16)})
    assert float(empty["masked_mse"]) == 0.0
    torch.testing.assert_close(empty["loss"], plain["bpp"])


def test_masked_loss_is_mean_over_all_pixels():
    output, x = fake_output()
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8, :] = 1
    d = OBJECTIVES["object"](lmbda=1.0)(output, {"x": x, "object": mask})["masked_mse"]
    expected = ((output["x_hat"] - x)[..., :8, :] ** 2).sum() / x.numel()
    torch.testing.assert_close(d, expected)


def test_unknown_objective_lists_the_registered_ones():
    with pytest.raises(UnknownNameError, match="mse, object, edge"):
        OBJECTIVES["texture"]


@pytest.fixture
def marked_dataset(tmp_path):
    """Images whose red channel is 255 exactly where the mask is set."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i, (h, w) in enumerate([(40, 50), (20, 24), (64, 33)]):
        mask = rng.random((h, w)) > 0.6
        rgb = rng.integers(0, 200, size=(h, w, 3), dtype=np.uint8)
        rgb[..., 0] = np.where(mask, 255, 0)
        write_png(tmp_path / f"{i}.png", rgb)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        masks.append(mask)
    data = {"images": images, "annotations": [], "categories": [], "icmflow": {"image_root": "."}}
    build_store(
        tmp_path / "m.zarr",
        work=tmp_path / "w",
        images=images,
        payloads=[masks],
        make_masks=lambda p: [pack(m) for m in p],
        images_per_shard=3,
        attrs={"kind": "object", "fingerprint": "t"},
        client=None,
    )
    return PreparedDataset(tmp_path / "d.json", data), tmp_path / "m.zarr"


def test_crops_keep_image_and_masks_aligned_also_when_padded(marked_dataset):
    dataset, store = marked_dataset
    crops = TrainingCrops(dataset, {"object": store, "edge": store}, patch_size=32)
    torch.manual_seed(0)
    for _ in range(5):
        for index in range(len(crops)):
            sample = crops[index]
            assert sample["x"].shape == (3, 32, 32) and sample["object"].shape == (1, 32, 32)
            torch.testing.assert_close(sample["x"][0], sample["object"][0])  # red == mask
            torch.testing.assert_close(sample["edge"], sample["object"])


def test_no_mask_store_gives_images_only(marked_dataset):
    dataset, _ = marked_dataset
    assert set(TrainingCrops(dataset, {}, patch_size=16)[0]) == {"x"}


def test_optimizers_split_on_quantiles_and_train_the_objective_too():
    model = create_model("bmshj2018-hyperprior", N=8, M=8)
    objective = torch.nn.Linear(2, 2)
    main, aux = configure_optimizers(model, 1e-4, 1e-3, objective)
    quantiles = {id(p) for n, p in model.named_parameters() if n.endswith(".quantiles")}
    assert {id(p) for p in aux.param_groups[0]["params"]} == quantiles
    main_ids = {id(p) for p in main.param_groups[0]["params"]}
    assert not quantiles & main_ids and {id(p) for p in objective.parameters()} <= main_ids


class ThreeTerms(Objective):
    """An objective with a term of its own and a trainable parameter."""

    def __init__(self, lmbda: float):
        super().__init__(lmbda)
        self.weight = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, output, batch):
        bpp = rate_bpp(output, batch["x"])
        texture = (output["x_hat"] - batch["x"]).abs().mean() * self.weight
        return {"loss": bpp + self.lmbda * texture, "bpp": bpp, "texture": texture}


def test_trainer_logs_every_term_it_gets(sample_prepared, tmp_path):
    result = train_codec(
        create_model("bmshj2018-hyperprior", seed=0, N=8, M=8),
        ThreeTerms(lmbda=10.0),
        TrainingCrops(sample_prepared["train"], {}, 64),
        TrainSettings(steps=3, batch_size=2, lr=1e-2, aux_lr=1e-3),
        log_path=tmp_path / "log.csv",
    )
    rows = read_log(tmp_path / "log.csv")
    assert list(rows[0]) == ["step", "loss", "bpp", "texture", "aux_loss", "lr"]
    assert [r["step"] for r in rows] == [1, 2, 3] and set(result.last) == {"loss", "bpp", "texture"}


def test_checkpoint_moves_to_compressai_with_identical_bitstreams(
    sample_prepared, sample_masks, tmp_path
):
    result = tiny_training(sample_prepared["train"], sample_masks["train"], tmp_path)
    path = save_trained(result, tmp_path / "checkpoint.pth.tar", {"N": 8, "M": 8}, step=4)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,bpp,masked_mse,aux_loss,lr" and len(lines) == 5
    record = torch.load(path, weights_only=False)
    assert {"state_dict", "epoch", "optimizer", "aux_optimizer"} <= set(record)
    ours = LearnedCodec(load_codec(path))
    theirs = ScaleHyperprior.from_state_dict(record["state_dict"]).eval()  # CompressAI's way
    theirs.update(force=True)
    rgb = read_rgb(sample_prepared["val"].image_path(sample_prepared["val"].images[0]))
    stream = ours.encode(rgb)
    assert LearnedCodec(theirs).encode(rgb).data == stream.data
    np.testing.assert_array_equal(LearnedCodec(theirs).decode(stream.data), stream.decoded)


class Crash(Exception):
    pass


def test_training_resumes_from_saved_state(sample_prepared, tmp_path, monkeypatch):
    state = tmp_path / "state.pt"
    calls = {"n": 0}
    original = OBJECTIVES["mse"].forward

    def crashing(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash
        return original(self, *args)

    monkeypatch.setattr(OBJECTIVES["mse"], "forward", crashing)
    with pytest.raises(Crash):
        tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    monkeypatch.undo()
    assert torch.load(state, weights_only=False)["step"] == 2
    tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    steps = [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_a_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(
    sample_prepared, tmp_path, monkeypatch
):
    """Ctrl-C after a saved state: the resumed steps draw the same quantisation noise, as every
    random generator is restored."""
    data = sample_prepared["train"]
    whole = tiny_training(data, None, tmp_path / "whole", steps=6)
    original, calls = OBJECTIVES["mse"].forward, {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # after the state of step 4 was saved
            raise KeyboardInterrupt
        return original(self, *args)

    state = tmp_path / "resumed" / "state.pt"
    monkeypatch.setattr(OBJECTIVES["mse"], "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_training(data, None, tmp_path / "resumed", steps=6, state_path=state, save_every=2)
    monkeypatch.undo()
    torch.rand(7)  # whatever the process drew meanwhile must not matter
    resumed = tiny_training(data, None, tmp_path / "resumed", steps=6, state_path=state)
    assert (tmp_path / "resumed" / "log.csv").read_text() == (
        tmp_path / "whole" / "log.csv"
    ).read_text()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


class Diverging(Objective):
    def forward(self, output, batch):
        bpp = rate_bpp(output, batch["x"])
        return {"loss": bpp * float("nan"), "bpp": bpp}


def test_a_loss_that_becomes_nan_stops_training_with_an_error(sample_prepared, tmp_path):
    with pytest.raises(DivergedError, match="the loss is nan at step 1: training diverged"):
        train_codec(
            create_model("bmshj2018-hyperprior", seed=0, N=8, M=8),
            Diverging(lmbda=1.0),
            TrainingCrops(sample_prepared["train"], {}, 64),
            TrainSettings(steps=30, batch_size=2, lr=1e-3, aux_lr=1e-3),
            log_path=tmp_path / "log.csv",
        )


def test_channels_last_trains_the_same_codec_within_float_tolerance(sample_prepared, tmp_path):
    runs = [
        tiny_training(sample_prepared["train"], None, tmp_path / str(layout), channels_last=layout)
        for layout in (False, True)
    ]
    contiguous, nhwc = (read_log(tmp_path / str(layout) / "log.csv") for layout in (False, True))
    for a, b in zip(contiguous, nhwc, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    weight = "g_a.0.weight"
    assert runs[1].model.state_dict()[weight].is_contiguous(memory_format=torch.channels_last)


def test_poly_schedule_decays_over_the_last_part_and_multistep_stays_the_default(
    sample_prepared, tmp_path
):
    """The auxiliary-loss paper's polynomial decay over the last half of training: after step
    k the learning rate is lr·(1 − (k − s)/(T − s))^p past s = start·T, lr before."""
    assert TrainSettings(steps=1, batch_size=1, lr=1, aux_lr=1).lr_schedule == "multistep"
    tiny_training(
        sample_prepared["train"],
        None,
        tmp_path,
        steps=8,
        lr=1e-2,
        lr_schedule="poly",
        lr_poly_start=0.5,
        lr_poly_power=2.0,
    )
    lrs = [row["lr"] for row in read_log(tmp_path / "log.csv")]
    expected = [1e-2 * (1 - max(0, k - 4) / 4) ** 2 for k in range(1, 9)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[3] == 1e-2 and lrs[-1] == 0.0
    tiny_training(sample_prepared["train"], None, tmp_path, lr=1e-2, lr_milestones=(2,))
    lrs = [row["lr"] for row in read_log(tmp_path / "log.csv")]
    assert lrs == pytest.approx([1e-2, 1e-3, 1e-3, 1e-3])


def test_poly_schedule_resumes_where_it_stopped(sample_prepared, tmp_path, monkeypatch):
    settings = dict(steps=6, lr=1e-2, lr_schedule="poly", lr_poly_start=0.0, lr_poly_power=0.9)
    tiny_training(sample_prepared["train"], None, tmp_path / "whole", **settings)
    whole = [row["lr"] for row in read_log(tmp_path / "whole" / "log.csv")]
    calls, original = {"n": 0}, OBJECTIVES["mse"].forward

    def crashing(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash
        return original(self, *args)

    state = tmp_path / "state.pt"
    monkeypatch.setattr(OBJECTIVES["mse"], "forward", crashing)
    with pytest.raises(Crash):
        tiny_training(
            sample_prepared["train"], None, tmp_path, state_path=state, save_every=4, **settings
        )
    monkeypatch.undo()
    tiny_training(
        sample_prepared["train"], None, tmp_path, state_path=state, save_every=4, **settings
    )
    assert [row["lr"] for row in read_log(tmp_path / "log.csv")] == pytest.approx(whole, rel=1e-12)


def test_objectives_see_every_step_also_after_a_resume(sample_prepared, tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(
        OBJECTIVES["mse"], "begin_step", lambda self, step, steps: seen.append((step, steps))
    )
    state = tmp_path / "state.pt"
    original = OBJECTIVES["mse"].forward

    def crashing(self, *args):
        if len(seen) == 3:
            raise Crash
        return original(self, *args)

    monkeypatch.setattr(OBJECTIVES["mse"], "forward", crashing)
    with pytest.raises(Crash):
        tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    monkeypatch.setattr(OBJECTIVES["mse"], "forward", original)
    tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    assert seen == [(1, 4), (2, 4), (3, 4), (3, 4), (4, 4)]
