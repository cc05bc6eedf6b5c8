import math

import numpy as np
import pytest

from icmflow.evaluation.bdrate import bd_rate
from icmflow.evaluation.metrics import image_metrics, mse, msssim, psnr
from icmflow.evaluation.report import bd_rates, markdown_table, rd_table


def test_psnr_whole_and_object_region():
    original = np.zeros((200, 200, 3), dtype=np.uint8)
    decoded = original.copy()
    decoded[:100] = 10  # error only in the top half
    mask = np.zeros((200, 200), dtype=bool)
    mask[150:] = True  # objects in the error-free bottom quarter
    assert mse(original, decoded) == pytest.approx(50.0)
    assert psnr(50.0) == pytest.approx(10 * math.log10(255**2 / 50))
    metrics = image_metrics(original, decoded, mask)
    assert metrics["object_psnr"] == math.inf and metrics["object_fraction"] == 0.25
    mask[:] = False
    mask[:10, :10] = True
    assert image_metrics(original, decoded, mask)["object_psnr"] == pytest.approx(psnr(100.0))
    assert math.isnan(image_metrics(original, decoded, np.zeros_like(mask))["object_psnr"])


def test_msssim_identity_and_small_images():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(192, 192, 3), dtype=np.uint8)
    assert msssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    assert 0 < msssim(image, noisy) < 1
    assert math.isnan(msssim(image[:100], image[:100]))


def test_bd_rate_known_answers():
    rates, quality = [0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0]
    assert bd_rate(rates, quality, rates, quality).percent == pytest.approx(0.0, abs=1e-9)
    half = bd_rate(rates, quality, [r / 2 for r in rates], quality)
    assert half.percent == pytest.approx(-50.0)
    unsorted = bd_rate(rates[::-1], quality[::-1], [r * 2 for r in rates], quality)
    assert unsorted.percent == pytest.approx(100.0)


def test_bd_rate_uses_the_operational_curve():
    rates = [0.1, 0.2, 0.4, 0.8]
    quality = [28.0, 31.0, 34.0, 37.0]
    noisy = bd_rate(rates, quality, [0.05, 0.1, 0.15, 0.2, 0.4], [28, 31, 30, 34, 37])
    assert noisy.percent == pytest.approx(-50.0)  # (0.15, 30) is dominated by (0.1, 31)
    assert "dominated point(s) dropped: (0.15 bpp, 30)" in noisy.note


def test_bd_rate_refuses_curves_without_enough_points_or_overlap():
    rates = [0.1, 0.2, 0.4, 0.8]
    result = bd_rate(rates, [28, 31, 30, 29], rates, [28, 31, 34, 37])
    assert result.percent is None and "anchor has 2 usable RD points; akima needs 3" in result.note
    result = bd_rate(rates, [28, 29, 30, 31], rates, [40, 41, 42, 43])
    assert result.percent is None and "do not overlap" in result.note


def test_report_table_and_bd_rates_of_every_series_against_each_anchor():
    metrics = [
        {
            "codec": f"{loss}-{lmbda}",
            "family": "learned",
            "series": loss,
            "setting": f"λ={lmbda}",
            "bpp": bpp,
            "psnr": q,
            "object_psnr": q + (3 if loss == "object" else 0),
            "ms_ssim": q / 40,
            "images": 4,
        }
        for loss, scale in (("mse", 1.0), ("object", 0.5), ("edge", 0.8))
        for lmbda, bpp, q in (
            (0.01, 0.1 * scale, 28),
            (0.02, 0.2 * scale, 31),
            (0.04, 0.4 * scale, 34),
        )
    ]
    rows = rd_table(metrics)
    assert [r["codec"] for r in rows] == [
        f"{loss}-{lmbda}" for loss in ("edge", "mse", "object") for lmbda in (0.01, 0.02, 0.04)
    ]
    both = bd_rates(rows, ["mse", "edge"], "akima")
    assert {(r["test"], r["anchor"]) for r in both} == {
        ("edge", "mse"),
        ("object", "mse"),
        ("mse", "edge"),
        ("object", "edge"),
    }
    results = {(r["test"], r["quality"]): r for r in both if r["anchor"] == "mse"}
    assert results["object", "psnr"]["bd_rate_percent"] == pytest.approx(-50.0)
    assert results["object", "object_psnr"]["bd_rate_percent"] < -50.0
    assert results["edge", "psnr"]["bd_rate_percent"] == pytest.approx(-20.0)
    assert "| mse-0.01 | mse | λ=0.01 |" in markdown_table(rows, ("codec", "series", "setting"))
