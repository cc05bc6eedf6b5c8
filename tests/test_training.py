import numpy as np
import pytest
import torch
from compressai.losses import RateDistortionLoss as CompressAILoss
from compressai.models import ScaleHyperprior

from icmflow.coding.checkpoint import load_codec, save_checkpoint
from icmflow.coding.codec import compress_image, decompress_image
from icmflow.coding.registry import create_model
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.build import build_store
from icmflow.masks.store import pack
from icmflow.training.data import MaskedCrops
from icmflow.training.losses import RateDistortionLoss
from icmflow.training.trainer import configure_optimizers, train_codec


def fake_output(n=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x_hat": torch.rand(n, 3, h, w, generator=g),
        "likelihoods": {"y": torch.rand(n, 8, 4, 4, generator=g).clamp(0.01, 1)},
    }, torch.rand(n, 3, h, w, generator=g)


def test_unmasked_loss_is_compressai_loss():
    output, x = fake_output()
    ours = RateDistortionLoss(0.013, masked=False)(output, x)
    theirs = CompressAILoss(lmbda=0.013)(output, x)
    torch.testing.assert_close(ours["loss"], theirs["loss"])
    torch.testing.assert_close(ours["bpp"], theirs["bpp_loss"])


def test_masked_loss_full_mask_equals_mse_and_empty_mask_is_rate_only():
    output, x = fake_output()
    plain = RateDistortionLoss(0.05, masked=False)(output, x)
    masked = RateDistortionLoss(0.05, masked=True)
    full = masked(output, x, torch.ones(2, 1, 16, 16))
    torch.testing.assert_close(full["loss"], plain["loss"])
    empty = masked(output, x, torch.zeros(2, 1, 16, 16))
    assert float(empty["mse"]) == 0.0
    torch.testing.assert_close(empty["loss"], plain["bpp"])


def test_masked_loss_is_mean_over_all_pixels():
    output, x = fake_output()
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8, :] = 1
    d = RateDistortionLoss(1.0, masked=True)(output, x, mask)["mse"]
    expected = ((output["x_hat"] - x)[..., :8, :] ** 2).sum() / x.numel()
    torch.testing.assert_close(d, expected)


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


def test_crops_keep_image_and_mask_aligned_also_when_padded(marked_dataset):
    dataset, store = marked_dataset
    crops = MaskedCrops(dataset, store, patch_size=32)
    torch.manual_seed(0)
    for _ in range(5):
        for index in range(len(crops)):
            x, m = crops[index]
            assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
            torch.testing.assert_close(x[0], m[0])  # red channel == mask, pixel for pixel


def test_no_mask_store_gives_full_masks(marked_dataset):
    dataset, _ = marked_dataset
    _, m = MaskedCrops(dataset, None, patch_size=16)[0]
    assert bool(m.all())


def test_optimizers_split_on_quantiles():
    model = create_model("bmshj2018-hyperprior", N=8, M=8)
    main, aux = configure_optimizers(model, 1e-4, 1e-3)
    quantiles = {id(p) for n, p in model.named_parameters() if n.endswith(".quantiles")}
    assert {id(p) for p in aux.param_groups[0]["params"]} == quantiles
    assert not quantiles & {id(p) for p in main.param_groups[0]["params"]}


def tiny_training(dataset, masks, tmp_path, **overrides):
    torch.manual_seed(0)
    options = dict(
        steps=4,
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
    options.update(overrides)
    return train_codec(
        create_model("bmshj2018-hyperprior", N=8, M=8),
        MaskedCrops(dataset, masks, 64),
        RateDistortionLoss(0.05, masked=masks is not None),
        **options,
    )


def test_checkpoint_moves_to_compressai_with_identical_bitstreams(
    sample_prepared, sample_masks, tmp_path
):
    model, optimizer, aux_optimizer, last = tiny_training(
        sample_prepared["train"], sample_masks["train"], tmp_path
    )
    model.update(force=True)
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(
        path,
        model,
        arch="bmshj2018-hyperprior",
        model_args={"N": 8, "M": 8},
        step=4,
        loss=last["loss"],
        optimizer=optimizer,
        aux_optimizer=aux_optimizer,
        extra={},
    )
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,bpp,mse,aux_loss,lr" and len(lines) == 5
    record = torch.load(path, weights_only=False)
    assert {"state_dict", "epoch", "optimizer", "aux_optimizer"} <= set(record)
    ours = load_codec(path)
    theirs = ScaleHyperprior.from_state_dict(record["state_dict"]).eval()  # CompressAI's way
    theirs.update(force=True)
    rgb = read_rgb(sample_prepared["val"].image_path(sample_prepared["val"].images[0]))
    stream = compress_image(ours, rgb)
    assert compress_image(theirs, rgb) == stream
    np.testing.assert_array_equal(decompress_image(theirs, stream), decompress_image(ours, stream))


class Crash(Exception):
    pass


def test_training_resumes_from_saved_state(sample_prepared, tmp_path):
    state = tmp_path / "state.pt"
    calls = {"n": 0}
    original = RateDistortionLoss.forward

    def crashing(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash
        return original(self, *args)

    RateDistortionLoss.forward = crashing
    try:
        with pytest.raises(Crash):
            tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    finally:
        RateDistortionLoss.forward = original
    assert torch.load(state, weights_only=False)["step"] == 2
    tiny_training(sample_prepared["train"], None, tmp_path, state_path=state, save_every=2)
    steps = [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
