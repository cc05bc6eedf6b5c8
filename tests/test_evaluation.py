import io
import math

import numpy as np
import pytest
from PIL import Image

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import coded_split, encode_dataset, read_bytes_per_image
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.bdrate import bd_rate
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.evaluation.metrics import image_metrics, mse, msssim, psnr
from icmflow.evaluation.plots import plot_accuracy, plot_rd
from icmflow.evaluation.report import bd_rates, markdown_table, rd_table
from icmflow.masks.store import MaskStore
from icmflow.stages.report import _undefined_note
from tests.helpers.codecs import textured_image
from tests.helpers.project import real_sample

TOLERANCE = 1e-6
"""How far the fast metrics may be from the reference (pytorch_msssim in float64)."""


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def generated_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Original and decoded images: odd and even sides (the pooling pads odd ones), the
    smallest size MS-SSIM takes, JPEG artefacts, noise, identity and opposite extremes."""
    rng = np.random.default_rng(0)
    pairs = []
    for height, width in ((161, 161), (162, 175), (201, 333), (255, 170)):
        image = textured_image(height, width, seed=height)
        noise = rng.normal(0, 25, image.shape)
        pairs += [
            (f"{height}x{width} jpeg q5", image, jpeg(image, 5)),
            (f"{height}x{width} jpeg q90", image, jpeg(image, 90)),
            (f"{height}x{width} noise", image, np.clip(image + noise, 0, 255).astype(np.uint8)),
        ]
    noise = rng.integers(0, 256, (170, 180, 3), dtype=np.uint8)
    pairs += [
        ("identical", noise, noise.copy()),
        ("unrelated noise", noise, rng.integers(0, 256, noise.shape, dtype=np.uint8)),
        ("black and white", np.zeros_like(noise), np.full_like(noise, 255)),
    ]
    return pairs


def same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN."""
    floats = isinstance(a, float) and isinstance(b, float)
    return a == b or (floats and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize(("name", "original", "decoded"), generated_pairs())
def test_fast_msssim_equals_the_reference_on_generated_images(name, original, decoded):
    fast, reference = msssim(original, decoded), msssim(original, decoded, precise=True)
    assert fast == pytest.approx(reference, abs=TOLERANCE), name


def test_fast_msssim_equals_the_reference_on_real_images():
    """Kodak and COCO photos (257×321 crops: odd sides), JPEG-coded at a low and a high
    quality."""
    paths = sorted(real_sample("kodak").glob("*.png"))[:2]
    paths += sorted((real_sample("coco-val158") / "images").glob("*.jpg"))[:2]
    for path in paths:
        original = np.ascontiguousarray(read_rgb(path)[:257, :321])
        for quality in (5, 75):
            decoded = jpeg(original, quality)
            reference = msssim(original, decoded, precise=True)
            assert msssim(original, decoded) == pytest.approx(reference, abs=TOLERANCE), (
                path.name,
                quality,
            )


def test_mse_is_the_float64_mean_exactly():
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    decoded = rng.integers(0, 256, original.shape, dtype=np.uint8)
    mask = rng.random(original.shape[:2]) < 0.3
    squared = (original.astype(np.float64) - decoded.astype(np.float64)) ** 2
    assert mse(original, decoded) == squared.mean()
    assert mse(original, decoded, mask) == squared[mask].mean()


def test_threads_equal_the_sequential_reference(sample_prepared, sample_masks, tmp_path):
    """Every image's metrics on two threads equal one thread's exactly, and the reference's
    (MS-SSIM by pytorch_msssim, one image after another) within the tolerance."""
    val = sample_prepared["val"]
    encode_dataset(CLASSICAL["jpeg"](family="jpeg", quality=30), {"val": val}, tmp_path / "jpeg")
    inputs = (
        val,
        PreparedDataset.load(coded_split(tmp_path / "jpeg", "val")),
        MaskStore(sample_masks["val"]),
        read_bytes_per_image(tmp_path / "jpeg", "val"),
    )
    threads, summary = evaluate_coded(*inputs, workers=2)
    one, _ = evaluate_coded(*inputs, workers=1)
    reference, reference_summary = evaluate_coded(*inputs, workers=1, precise=True)
    assert [r["image_id"] for r in threads] == [im["id"] for im in val.images]
    for row, other in zip(threads, one, strict=True):
        assert row.keys() == other.keys()
        assert all(same(row[k], other[k]) for k in row), (row, other)
    assert sum(math.isfinite(r["ms_ssim"]) for r in reference) > 0  # else vacuous
    for row, other in zip(threads, reference, strict=True):
        for key in ("psnr", "object_psnr", "ms_ssim"):
            assert row[key] == pytest.approx(other[key], abs=TOLERANCE, nan_ok=True), key
    for key in ("bpp", "psnr", "object_psnr", "ms_ssim"):
        assert summary[key] == pytest.approx(reference_summary[key], abs=TOLERANCE), key


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


def rd_rows(object_psnr: float) -> list[dict]:
    return [
        {
            "codec": f"{family}-{setting}",
            "family": "learned" if family == "hyperprior" else "jpeg",
            "series": family,
            "setting": setting,
            "bpp": bpp,
            "psnr": 25 + 10 * bpp,
            "object_psnr": object_psnr,
            "ms_ssim": 0.9,
        }
        for family, settings in (("jpeg", ("q=10", "q=50")), ("hyperprior", ("λ=0.01", "λ=0.1")))
        for bpp, setting in zip((0.2, 0.8), settings, strict=True)
    ]


def test_rd_plot_of_data_without_objects_says_so_instead_of_an_empty_frame(tmp_path):
    figure = plot_rd(rd_rows(math.nan), "object_psnr", tmp_path / "object.png", "objects")
    (ax,) = figure.axes
    assert (tmp_path / "object.png").is_file() and not ax.axison and not ax.lines
    assert [t.get_text() for t in ax.texts] == [
        "nothing to plot: no image of the evaluated split has objects"
    ]
    figure = plot_rd(rd_rows(30.0), "object_psnr", tmp_path / "object.png", "objects")
    assert figure.axes[0].axison and len(figure.axes[0].lines) == 2


def accuracy_rows(map50: float) -> list[dict]:
    original = {"family": "original", "series": "original", "setting": "", "bpp": math.nan}
    return [
        {"model": "pre-trained", **original, "bbox_map50": 0.6},
        *(
            {**row, "model": "pre-trained", "bbox_map50": map50 * row["bpp"]}
            for row in rd_rows(math.nan)
        ),
    ]


def test_accuracy_plot_labels_points_with_their_setting(tmp_path):
    figure = plot_accuracy(accuracy_rows(0.5), "bbox_map50", tmp_path / "map.png", "map")
    labels = {t.get_text() for t in figure.axes[0].texts}
    assert labels == {"q=10", "q=50", "λ=0.01", "λ=0.1"}
    assert len(figure.axes[0].lines) == 3  # two series and the uncompressed line
    figure = plot_accuracy(accuracy_rows(math.nan), "bbox_map50", tmp_path / "map.png", "map")
    assert len(figure.axes[0].lines) == 1  # the uncompressed line alone: no NaN series


def test_markdown_tables_give_every_float_the_same_decimals():
    rows = [{"codec": "a", "images": 4, "bpp": 0.531, "psnr": 28.5, "map": 0.12345, "x": math.nan}]
    table = markdown_table(rows, ("codec", "images", "bpp", "psnr", "map", "x"))
    assert table.splitlines()[-1] == "| a | 4 | 0.5310 | 28.5000 | 0.1235 | – |"


def test_rd_md_notes_a_quality_no_codec_has():
    assert _undefined_note(rd_rows(math.nan)) == (
        "\nobject-region PSNR (dB) is undefined for every codec: no image of the evaluated "
        "split has objects.\n"
    )
    assert _undefined_note(rd_rows(30.0)) == ""
