"""Image `file_name`s, and the names of the outputs derived from them.

A `file_name` is a path relative to its split's image folder. Every output named after an image
(a coded dataset's bitstream and decoded PNG, its YOLO label file, the ultralytics training
layout) keeps the folders of its `file_name` and replaces its suffix: `JPEGImages/a.jpg`
becomes `images/<split>/JPEGImages/a.png` with `labels/<split>/JPEGImages/a.txt`. Hence a
`file_name` must stay inside its folder (no absolute path, no `..`), and no two images of a
split may share a stem (`a.png` and `a.jpg` would share `a.png`, `a.bin` and `a.txt`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from icmflow.core.errors import InputError

IMAGES, LABELS = "/images/", "/labels/"


def file_name_problem(name: object) -> str | None:
    """Why `name` cannot be an image's `file_name`, or None."""
    if not isinstance(name, str) or not name:
        return f"file_name must be a non-empty path, got {name!r}"
    if any(ord(c) < 32 for c in name):
        return f"file_name {name!r} holds a control character"
    path = PurePosixPath(name)
    if path.is_absolute():
        return (
            f"file_name {name!r} is absolute: make it relative to the split's `images` folder "
            "(outputs named after it would be written outside their folder)"
        )
    if ".." in path.parts:
        return (
            f"file_name {name!r} climbs out of the image folder with '..': point the split's "
            "`images` at a folder holding every image, or move the image into it"
        )
    if not path.name:
        return f"file_name {name!r} names no file"
    return None


def stem(name: str) -> str:
    """`name` without its suffix, folders kept: the name every output derived from it shares."""
    return PurePosixPath(name).with_suffix("").as_posix()


def output_stem(name: str, origin: Path | str) -> str:
    """`stem(name)`, refusing (an `InputError` naming `origin`) a name that would leave the
    output folder: prepare refuses such names, so a dataset holding one was not prepared here."""
    problem = file_name_problem(name)
    if problem:
        raise InputError(origin, f"file_name={name!r}", f"{problem}; run `icmflow prepare` again")
    return stem(name)


def label_file(image: str) -> str:
    """Where ultralytics looks for the labels of the image at path `image`: the last `/images/`
    becomes `/labels/` and the suffix `.txt` (its `img2label_paths`)."""
    return LABELS.join(image.rsplit(IMAGES, 1)).rsplit(".", 1)[0] + ".txt"
