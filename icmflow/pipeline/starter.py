"""`icmflow init`: a commented, minimal params.yaml for one's own dataset.

One dataset (its splits found in the format's usual layout), the shared `train` settings written
out with the schema's own defaults and descriptions (nothing hidden), one learned codec and a
JPEG anchor series, the coding split and the report: a project that `icmflow pipeline && dvc
repro` runs as it is, with none of the demo's entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from icmflow.datasets.formats import FORMATS
from icmflow.datasets.layouts import IMAGE_SUFFIXES
from icmflow.pipeline.params.sections import TrainParams

COMMENT_COLUMN = 30
TRAIN_NAMES = ("train", "training")
EVAL_NAMES = ("val", "valid", "validation", "test")
JPEG_QUALITIES = (10, 30, 50, 70)
LEARNED = {
    "family": "learned",
    "arch": "bmshj2018-hyperprior",
    "model_args": {"N": 128, "M": 192},
    "objective": "mse",
    "lmbda": 0.0067,
}
"""The papers' hyperprior at CompressAI's λ of its quality 3 for MSE."""


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def find_splits(format: str, root: Path) -> dict[str, dict[str, str]]:
    """Each split's `images` (and `annotations`) relative to `root`, found in the format's usual
    layout (README, "Datasets"); the usual `train` and `val` paths when none is found."""
    splits: dict[str, dict[str, str]] = {}
    if format == "images":
        named = [p for p in _subfolders(root) if p.name.lower() in TRAIN_NAMES + EVAL_NAMES]
        splits = {p.name: {"images": p.name} for p in named if _has_images(p)}
        return splits or {"all": {"images": "."}}
    if format == "coco":
        for json in sorted((root / "annotations").glob("instances_*.json")):
            split = json.stem.removeprefix("instances_")
            splits[split] = {"annotations": f"annotations/{json.name}", "images": split}
    elif format == "yolo":
        for folder in _subfolders(root / "images"):
            splits[folder.name] = {
                "annotations": f"labels/{folder.name}",
                "images": f"images/{folder.name}",
            }
    elif format == "cityscapes":
        for folder in _subfolders(root / "leftImg8bit"):
            splits[folder.name] = {
                "annotations": f"gtFine/{folder.name}",
                "images": f"leftImg8bit/{folder.name}",
            }
    elif format == "visdrone":
        for folder in _subfolders(root):
            if (folder / "images").is_dir() and (folder / "annotations").is_dir():
                split = folder.name.rpartition("-")[2].lower()
                splits[split] = {
                    "annotations": f"{folder.name}/annotations",
                    "images": f"{folder.name}/images",
                }
    return splits or _usual(format)


def _usual(format: str) -> dict[str, dict[str, str]]:
    layouts = {
        "coco": ("annotations/instances_{}.json", "{}"),
        "yolo": ("labels/{}", "images/{}"),
        "cityscapes": ("gtFine/{}", "leftImg8bit/{}"),
        "visdrone": ("{}/annotations", "{}/images"),
    }
    annotations, images = layouts.get(format, ("{}/annotations", "{}/images"))
    return {
        s: {"annotations": annotations.format(s), "images": images.format(s)}
        for s in ("train", "val")
    }


def _pick(splits: list[str], names: tuple[str, ...], default: str) -> str:
    return next((s for s in splits if s.lower() in names), default)


def _line(key: str, value: Any, comment: str | None, indent: int = 2) -> str:
    text = " " * indent + f"{key}: {_flow(value)}"
    if comment:
        text = text.ljust(COMMENT_COLUMN - 1) + f" # {comment}"
    return text + "\n"


def _flow(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def starter_params(*, format: str, root: str, name: str) -> str:
    """The text of a params.yaml for dataset `name` of `format` at `root`."""
    FORMATS[format]  # an unknown format names the registered ones
    root_path = Path(root)
    splits = find_splits(format, root_path)
    train_split = _pick(list(splits), TRAIN_NAMES, next(iter(splits)))
    eval_split = _pick([s for s in splits if s != train_split], EVAL_NAMES, train_split)
    annotated = FORMATS[format].options.annotated
    text = [
        f"# icmflow params for dataset {name!r}, written by `icmflow init --format {format} "
        f"--root {root}`.\n",
        "# Every setting not written here has its default: `icmflow params --resolved` prints "
        "them all.\n",
        "# Then: icmflow pipeline && dvc repro; icmflow decode / icmflow show (README: "
        '"Your own data").\n\n',
        "datasets:\n",
        f"  {name}:\n",
        _line("format", format, "README: Datasets (formats and their layouts)", 4),
        _line("root", root, "DVC tracks everything under it", 4),
    ]
    if format == "yolo":
        found = sorted(p.name for p in root_path.glob("*.yaml"))
        yaml_name = found[0] if found else "data.yaml"
        text.append(_line("dataset_yaml", yaml_name, "the class names (`names`), from root", 4))
    text.append("    splits:\n")
    text += [_line(split, paths, None, 6) for split, paths in splits.items()]
    if eval_split == train_split:
        text.append(
            "  # One split: codecs are evaluated on the images they trained on. For a fair RD "
            "figure,\n  # train on other images (a second dataset entry) and evaluate on these.\n"
        )
    text += [
        "\n",
        "train:                        # every learned codec (the defaults, written out)\n",
    ]
    own = {"dataset": name, "split": train_split}
    for field, info in TrainParams.model_fields.items():
        value = own.get(field, TrainParams().model_dump()[field])
        text.append(_line(field, value, info.description))
    text += [
        "  # A smoke-scale look on a CPU, far from converged (how the demo trains its base codec\n",
        "  # from random weights, about a minute on 2 cores): steps 1200, lr 2.0e-3,\n",
        "  # lr_milestones [1000], patch_size 64, batch_size 8, model_args {N: 32, M: 48}.\n\n",
        "codecs:                       # README: Codecs; add λ values for an RD curve\n",
        "  # CompressAI's λ for MSE by quality 1-6: 0.0018 0.0035 0.0067 0.0130 0.0250 0.0483\n",
    ]
    if annotated:
        text.append("  # objective object: the masked loss on annotated objects (the papers')\n")
    text.append(_line("mse-1", LEARNED, None))
    text += [_line(f"jpeg-q{q}", {"family": "jpeg", "quality": q}, None) for q in JPEG_QUALITIES]
    text += [
        "\nencode:                       # what every codec codes and evaluate measures\n",
        _line("dataset", name, None),
        _line("split", eval_split, None),
        _line("device", "cpu", "decode where you encode (bitstreams are not portable)"),
        "\nreport:\n",
        _line("anchors", ["jpeg"], "BD-rates of every other series against these series"),
    ]
    return "".join(text)
