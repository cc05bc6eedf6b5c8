"""A folder of images without annotations (`format: images`): Kodak, CLIC, one's own photos.

Every image file under the split's folder, subfolders included, in sorted path order (ids 1, 2,
...); any mix of the suffixes in `layouts.IMAGE_SUFFIXES`, in any case. The prepared JSON has
the images and no annotations or categories, so such a dataset serves what needs pixels only:
training codecs on objectives without object masks (`mse`), encoding and RD evaluation (PSNR,
MS-SSIM, bpp). What needs annotations (object masks, the `object` objective, object PSNR, task
models) refuses it with a params error. Pixels are read as stored (no EXIF rotation), as
everywhere. Two files that differ only in suffix (`a.jpg`, `a.png`) would be coded to the same
`a.png`: prepare refuses them as it does in every format (`icmflow.datasets.coco`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import RawDataset
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, FormatOptions
from icmflow.datasets.layouts import (
    IMAGE_SUFFIXES,
    RawBuilder,
    list_files,
    read_headers,
    require_folder,
)


def read_images(annotations: Path | None, images: Path, problems: ProblemLog) -> RawDataset:
    """One split: every image under `images` (`annotations` is None: there are none)."""
    require_folder(images, "image")
    files = list_files(images, IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            images,
            "",
            f"no image files here or in its subfolders ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "check the dataset's root and splits in params.yaml",
        )
    headers = read_headers(images, files, problems, refuse_orientation=False)
    builder = RawBuilder()
    for image in sorted(headers):
        builder.add(image, headers[image], (str(images / image), ""), [])
    return builder.build(images, "images", [], "none (format images has no annotations)", {})


class ImagesOptions(FormatOptions):
    format: Literal["images"]
    annotated: ClassVar[bool] = False


FORMATS.register("images")(DatasetFormat(ImagesOptions, read_images))
