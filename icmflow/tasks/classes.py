"""The mapping between a dataset's category ids and a task model's class indices.

A mapping is given explicitly ({category_id: model_class}, a task entry's `classes:`) or found by
name: case-insensitive, with spaces, underscores and hyphens equivalent ("traffic light" matches
"traffic_light"). Every dataset category must map to exactly one model class, checked before any
image is processed; model classes that are no dataset category (a COCO-80 detector scored on a
two-category dataset) are allowed, and their predictions are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from icmflow.core.errors import IcmflowError

FOREGROUND = 1
"""The class of every object for a foreground-extraction model (0: background)."""

LISTED = 6
"""Category pairs a mapping's `description` names; the rest are counted."""


class ClassMappingError(IcmflowError):
    """A dataset's categories and a model's classes do not match; the message says how to map
    them."""


def _normalised(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _listed(items: dict[int, str]) -> str:
    return ", ".join(f"{key} ({name!r})" for key, name in sorted(items.items())) or "none"


@dataclass(frozen=True)
class ClassMapping:
    """Dataset category id <-> model class index, one to one over the dataset's categories."""

    to_model: dict[int, int]
    """Category id -> model class (for training on the dataset)."""
    category_names: dict[int, str]
    class_names: dict[int, str]
    explicit: bool = False

    @cached_property
    def _to_category(self) -> dict[int, int]:
        return {model_class: cat for cat, model_class in self.to_model.items()}

    def category_of(self, model_class: int) -> int | None:
        """The dataset category of a model class; None for a class the dataset lacks."""
        return self._to_category.get(int(model_class))

    def categories_of(self, classes: np.ndarray, *, unmapped: int = 0) -> np.ndarray:
        """An array of model classes as category ids, vectorised; unmapped classes become
        `unmapped` (0: background)."""
        classes = np.asarray(classes, dtype=np.int64)
        lookup = np.full(max(self._to_category, default=0) + 1, unmapped, dtype=np.int64)
        lookup[list(self._to_category)] = list(self._to_category.values())
        inside = (classes >= 0) & (classes < lookup.size)
        return np.where(inside, lookup[np.where(inside, classes, 0)], unmapped)

    def _pairs(self) -> list[str]:
        return [
            f"{self.category_names[cat]}={model_class}"
            for cat, model_class in sorted(self.to_model.items())
        ]

    @property
    def pairs(self) -> str:
        """Every category's model class, e.g. `car=2, person=0`."""
        return ", ".join(self._pairs())

    @property
    def description(self) -> str:
        """A short line for logs, e.g. `2 categories by name (car=2, person=0); 78 model
        classes dropped`; past `LISTED` categories, the first few and a count (`pairs` has
        them all)."""
        pairs = self._pairs()
        if len(pairs) > LISTED:
            pairs = [*pairs[: LISTED - 1], f"… {len(pairs) - LISTED + 1} more"]
        how = "explicit" if self.explicit else "by name"
        dropped = len(set(self.class_names) - set(self._to_category))
        return (
            f"{len(self.to_model)} categories {how} ({', '.join(pairs)}); "
            f"{dropped} model classes dropped"
        )


def foreground_mapping(categories: list[dict]) -> ClassMapping:
    """Every category of `categories` to the one class of a foreground model (1)."""
    names = {c["id"]: c["name"] for c in categories}
    return ClassMapping(dict.fromkeys(names, FOREGROUND), names, {FOREGROUND: "foreground"})


def class_mapping(
    categories: list[dict], class_names: dict[int, str], explicit: dict[int, int] | None
) -> ClassMapping:
    """Map every category of `categories` (COCO entries with id and name) to a model class.

    `explicit` ({category_id: model_class}) is used as given; otherwise categories match model
    classes by name. Raises `ClassMappingError` naming the categories left unmapped, the model's
    classes, and the fix.
    """
    names = {c["id"]: c["name"] for c in categories}
    to_model = _explicit(explicit, names, class_names) if explicit else _by_name(names, class_names)
    unmapped = {cat: name for cat, name in names.items() if cat not in to_model}
    if unmapped:
        raise ClassMappingError(
            f"dataset categories {_listed(unmapped)} match no class of the model "
            f"(its classes: {_listed(class_names)}); give the task entry a `classes:` mapping "
            "{category_id: model_class} covering every category"
        )
    _check_one_to_one(to_model, names)
    return ClassMapping(to_model, names, dict(class_names), explicit=bool(explicit))


def _explicit(
    explicit: dict[int, int], names: dict[int, str], class_names: dict[int, str]
) -> dict[int, int]:
    unknown_categories = sorted(set(explicit) - set(names))
    if unknown_categories:
        raise ClassMappingError(
            f"`classes:` names category ids {unknown_categories} that the dataset lacks "
            f"(its categories: {_listed(names)})"
        )
    unknown_classes = sorted(set(explicit.values()) - set(class_names))
    if unknown_classes:
        raise ClassMappingError(
            f"`classes:` names model classes {unknown_classes} that the model lacks "
            f"(its classes: {_listed(class_names)})"
        )
    return dict(explicit)


def _by_name(names: dict[int, str], class_names: dict[int, str]) -> dict[int, int]:
    by_name: dict[str, list[int]] = {}
    for model_class, name in sorted(class_names.items()):
        by_name.setdefault(_normalised(name), []).append(model_class)
    to_model = {}
    for cat, name in names.items():
        matches = by_name.get(_normalised(name), [])
        if len(matches) > 1:
            raise ClassMappingError(
                f"dataset category {cat} ({name!r}) matches model classes "
                f"{_listed({m: class_names[m] for m in matches})}; give the task entry a "
                "`classes:` mapping {category_id: model_class} to choose"
            )
        if matches:
            to_model[cat] = matches[0]
    return to_model


def _check_one_to_one(to_model: dict[int, int], names: dict[int, str]) -> None:
    shared: dict[int, list[int]] = {}
    for cat, model_class in to_model.items():
        shared.setdefault(model_class, []).append(cat)
    for model_class, cats in shared.items():
        if len(cats) > 1:
            raise ClassMappingError(
                f"dataset categories {_listed({c: names[c] for c in cats})} all map to model "
                f"class {model_class}; each category needs its own class: correct the task "
                "entry's `classes:` mapping or the category names"
            )
