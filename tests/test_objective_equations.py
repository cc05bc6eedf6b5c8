"""Every objective's loss against its paper's equation.

Each test recomputes the terms an objective logs from the codec's output (bits per pixel from
the likelihoods, the squared errors from the images, the task losses from the frozen model),
then the loss from those terms by the paper's equation, with the coefficients written out here,
and compares numerically: a changed coefficient, a dropped or added term fails. Both the papers'
defaults and other coefficients are checked, so that an argument cannot be ignored.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from icmflow.codecs.architectures import create_model
from icmflow.codecs.compressed_domain import machine_loss, primary_loss
from icmflow.training.objectives import OBJECTIVES
from icmflow.vision.tasks.base import TaskModelSpec
from icmflow.vision.tasks.differentiable import load_task_loss
from tests.helpers.builders import random_task_weights
from tests.helpers.compressed_domain import batch as labelled_batch
from tests.helpers.compressed_domain import build as compressed_domain_codec

SCALE = 255**2
"""CompressAI's λ scale: λ·255²·MSE on images in [0, 1]."""
RTOL = 1e-5


def bits_per_pixel(likelihoods: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    return sum(-torch.log2(v).sum() for v in likelihoods.values()) / (n * h * w)


def close(found: torch.Tensor, expected: torch.Tensor | float) -> None:
    torch.testing.assert_close(
        found.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=RTOL, atol=1e-7
    )


def fake_output(seed: int = 0) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    likelihoods = {
        "y": torch.rand(2, 8, 4, 4, generator=g).clamp(0.01, 1),
        "z": torch.rand(2, 4, 2, 2, generator=g).clamp(0.01, 1),
    }
    output = {"x_hat": torch.rand(2, 3, 16, 16, generator=g), "likelihoods": likelihoods}
    return output, torch.rand(2, 3, 16, 16, generator=g)


@pytest.mark.parametrize("lmbda", [0.0035, 0.13])
def test_mse_is_rate_plus_lambda_255_squared_mse(lmbda):
    output, x = fake_output()
    terms = OBJECTIVES["mse"](lmbda=lmbda)(output, {"x": x})
    bpp, mse = bits_per_pixel(output["likelihoods"], x), ((output["x_hat"] - x) ** 2).mean()
    close(terms["bpp"], bpp)
    close(terms["mse"], mse)
    close(terms["loss"], bpp + lmbda * SCALE * mse)


@pytest.mark.parametrize("kind", ["object", "edge"])
@pytest.mark.parametrize("lmbda", [0.005, 0.05])
def test_masked_mse_is_rate_plus_lambda_255_squared_masked_mse(kind, lmbda):
    """Object-region paper eq. 4 / SA-ICM: L = R + λ·255²·MSE(x⊙m, x̂⊙m)."""
    output, x = fake_output(1)
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.6).float()
    terms = OBJECTIVES[kind](lmbda=lmbda)(output, {"x": x, kind: mask})
    bpp = bits_per_pixel(output["likelihoods"], x)
    masked = (((output["x_hat"] - x) * mask) ** 2).mean()
    close(terms["bpp"], bpp)
    close(terms["masked_mse"], masked)
    close(terms["loss"], bpp + lmbda * SCALE * masked)


def test_scalable_counts_the_human_layers_rate_only():
    """Scalable paper eq. 3: L = R(ya) + R(za) + λ·255²·MSE(x, x̂)."""
    output, x = fake_output(3)
    machine, _ = fake_output(4)
    output["machine_likelihoods"] = machine["likelihoods"]
    terms = OBJECTIVES["scalable"](lmbda=0.01)(output, {"x": x})
    bpp, mse = bits_per_pixel(output["likelihoods"], x), ((output["x_hat"] - x) ** 2).mean()
    close(terms["loss"], bpp + 0.01 * SCALE * mse)
    close(terms["machine_bpp"], bits_per_pixel(machine["likelihoods"], x))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A frozen torchvision DeepLabV3 (ResNet-18, random weights) as the recognition model."""
    spec = TaskModelSpec(
        kind="semantic_segmentation",
        weights=tmp_path_factory.mktemp("deeplab") / "task.pt",
        input_size=64,
        options={"arch": "deeplabv3_resnet18", "num_classes": 4},
    )
    return load_task_loss("torchvision", random_task_weights(spec))


def images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def run_codec(objective, seed: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A tiny hyperprior's training-mode output on two images, and the latent g_s received."""
    model = create_model("bmshj2018-hyperprior", seed=seed, N=16, M=24).train()
    objective.bind(model)
    latent = {}
    model.g_s.register_forward_pre_hook(lambda _, args: latent.setdefault("y_hat", args[0]))
    x = images(seed)
    return model(x), x, latent["y_hat"]


AUX_CASES = [
    # (objective, its arguments, λ, α, β of the equation); the papers' defaults: α 0.5, β 1
    ("task-loss", {}, 0.8, 0.0, 0.0),
    ("task-loss", {}, 3.2, 0.0, 0.0),
    ("aux-loss", {}, 1.6, 0.5, 0.0),
    ("aux-loss", {"alpha": 0.3}, 0.4, 0.3, 0.0),
    ("aux-loss-image", {}, 2.0, 0.5, 1.0),
    ("aux-loss-image", {"alpha": 0.2, "image_weight": 2.5}, 4.0, 0.2, 2.5),
]
TINY_BRANCH = {"branch_widths": (16, 16, 16, 16, 32), "branch_groups": 8}


@pytest.mark.parametrize(("name", "args", "lmbda", "alpha", "beta"), AUX_CASES)
def test_task_driven_losses_follow_eqs_4_to_6(segmenter, name, args, lmbda, alpha, beta):
    """Auxiliary-loss paper: eq. 4 L = R + λ·E(y, ŷ); eq. 5 L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)};
    eq. 6 L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux) + β·MSE(x, x̂)} (β = 1 in the paper)."""
    branch_args = TINY_BRANCH if name != "task-loss" else {}
    objective = OBJECTIVES[name](lmbda=lmbda, task=segmenter, **branch_args, **args).train()
    output, x, latent = run_codec(objective)
    terms = objective(output, {"x": x})
    targets = segmenter.targets(x)  # pseudo-labels: the frozen model's class map on x
    bpp = bits_per_pixel(output["likelihoods"], x)
    task = segmenter(output["x_hat"], targets)
    close(terms["bpp"], bpp)
    close(terms["task_loss"], task)
    inner = task
    if name != "task-loss":
        branch = objective.head(objective.branch(latent), targets, (64, 64))
        close(terms["branch_loss"], branch)
        inner = inner + alpha * branch
    if name == "aux-loss-image":
        mse = ((output["x_hat"] - x) ** 2).mean()  # on [0, 1] images, no 255²
        close(terms["mse"], mse)
        inner = inner + beta * mse
    close(terms["loss"], bpp + lmbda * inner)


def test_the_resnet_branch_of_table_2_follows_eq_5_too(segmenter):
    objective = OBJECTIVES["aux-loss"](
        lmbda=1.0, task=segmenter, branch_backbone="resnet", branch_widths=(16, 16, 16, 16, 32)
    ).train()
    output, x, latent = run_codec(objective)
    terms = objective(output, {"x": x})
    targets = segmenter.targets(x)
    branch = objective.head(objective.branch(latent), targets, (64, 64))
    close(terms["branch_loss"], branch)
    task = segmenter(output["x_hat"], targets)
    close(terms["loss"], bits_per_pixel(output["likelihoods"], x) + 1.0 * (task + 0.5 * branch))


WEIGHTS = [
    # (λ1 task_weight, λ2 kd_weight, machine_rate_weight, λ3 on CompressAI's scale); the
    # paper's λ1 = λ2 = λ4 = 1 and no gate loss
    ({}, 1.0, 1.0, 0.0, 0.013),
    ({"task_weight": 0.7, "kd_weight": 1.9, "machine_rate_weight": 0.3}, 0.7, 1.9, 0.3, 0.05),
]


@pytest.mark.parametrize(("args", "l1", "l2", "rate_weight", "lmbda"), WEIGHTS)
def test_compressed_domain_losses_follow_eqs_3_and_4(args, l1, l2, rate_weight, lmbda):
    """Paper 004: eq. 3 L_m = λ1·L_task + λ2·MSE(F_m, F_gt) (+ the gate's rate term);
    eq. 4 L = L_m + λ3·MSE(x, x̂) + λ4·R with λ3 = λ·255², λ4 = 1; R of ŷ and ẑ (eq. 5)."""
    model, teachers = compressed_domain_codec()
    x, labels = labelled_batch()
    model.train()
    output = model(x, "seg", labels)
    machine = machine_loss(output, x, teachers["seg"], **args)
    primary = primary_loss(output, x, teachers["seg"], lmbda, **args)
    task = F.cross_entropy(output["logits"], labels, ignore_index=255)
    with torch.no_grad():
        target = teachers["seg"].stem(x)
    kd = ((output["features"] - target) ** 2).mean()
    keep = output["keep"][:, :, None, None]
    kept_bits = -(torch.log2(output["likelihoods"]["y"]) * keep).sum()
    machine_bpp = (kept_bits - torch.log2(output["likelihoods"]["z"]).sum()) / (2 * 64 * 64)
    bpp = bits_per_pixel(output["likelihoods"], x)
    mse = ((output["x_hat"] - x) ** 2).mean()
    for terms in (machine, primary):
        close(terms["task"], task)
        close(terms["kd"], kd)
        close(terms["machine_bpp"], machine_bpp)
    eq3 = l1 * task + l2 * kd + rate_weight * machine_bpp
    close(machine["loss"], eq3)
    close(primary["bpp"], bpp)
    close(primary["mse"], mse)
    close(primary["loss"], eq3 + lmbda * SCALE * mse + 1.0 * bpp)


@pytest.mark.parametrize(("args", "l1", "l2", "rate_weight", "lmbda"), WEIGHTS)
def test_the_compressed_domain_objective_logs_eq_4(segmenter, args, l1, l2, rate_weight, lmbda):
    objective = OBJECTIVES["compressed-domain"](
        lmbda=lmbda, task=segmenter, targets="model", **args
    ).train()
    output, x, _ = run_codec(objective)
    terms = objective(output, {"x": x})
    bpp = bits_per_pixel(output["likelihoods"], x)
    mse = ((output["x_hat"] - x) ** 2).mean()
    close(terms["bpp"], bpp)
    close(terms["mse"], mse)
    assert float(terms["kd"].detach()) > 0 and math.isfinite(float(terms["task"].detach()))
    eq3 = l1 * terms["task"] + l2 * terms["kd"] + rate_weight * terms["machine_bpp"]
    close(terms["loss"], eq3 + lmbda * SCALE * mse + bpp)
