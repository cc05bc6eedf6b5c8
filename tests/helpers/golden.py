"""Golden files (as CompressAI's `tests/expected/`): results a change in coding or metrics must
not move silently. `ICMFLOW_REGENERATE_GOLDEN=1 pytest tests/test_golden.py tests/test_tcm.py`
rewrites them; review the diff before committing it."""

from __future__ import annotations

import json
import math
import os

import pytest

from tests.helpers.project import REPO

EXPECTED = REPO / "tests" / "expected"
REGENERATE = os.environ.get("ICMFLOW_REGENERATE_GOLDEN") == "1"


def _same(actual, expected, rel: float) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        if math.isnan(expected) and math.isnan(actual):
            return True
        return math.isclose(actual, expected, rel_tol=rel, abs_tol=rel)
    return actual == expected


def golden_mismatch(name: str, actual: dict, *, rel: float = 1e-9) -> str:
    """How `actual` (a flat dict of strings and numbers) differs from `tests/expected/<name>.json`:
    "" when it matches. With ICMFLOW_REGENERATE_GOLDEN=1 it rewrites the file and skips."""
    path = EXPECTED / f"{name}.json"
    if REGENERATE:
        EXPECTED.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {path}")
    if not path.is_file():
        pytest.fail(f"{path} is missing: ICMFLOW_REGENERATE_GOLDEN=1 pytest {name} writes it")
    expected = json.loads(path.read_text())
    differ = {
        key: (actual.get(key), value)
        for key, value in expected.items()
        if key not in actual or not _same(actual[key], value, rel)
    }
    extra = sorted(set(actual) - set(expected))
    if not differ and not extra:
        return ""
    return (
        f"{path} differs (key: (now, golden)): {differ}; new keys: {extra}. If the change is "
        "intended, regenerate with ICMFLOW_REGENERATE_GOLDEN=1 and review the diff"
    )
