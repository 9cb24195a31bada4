"""The nesting bound that runs before validation on every write, at its edge."""

from __future__ import annotations

from typing import Any

import pytest

from services.kit.errors import BadRequest
from services.share.store.validation import MAX_DEPTH, check_depth


def nested(depth: int) -> dict[str, Any]:
    """A resource whose deepest container sits ``depth`` levels below it, alternating lists and objects."""
    node: Any = {"valueString": "x"}
    for level in range(depth):
        node = [node] if level % 2 == 0 else {"extension": node}
    return {"resourceType": "Patient", "extension": node}


def test_the_bound_is_exact() -> None:
    check_depth(nested(MAX_DEPTH - 1), "Patient")  # deepest container at depth MAX_DEPTH
    with pytest.raises(BadRequest) as refused:
        check_depth(nested(MAX_DEPTH), "Patient")
    assert refused.value.code == "too_deep"


def test_wide_documents_are_not_deep() -> None:
    check_depth({"resourceType": "Patient", "extension": [{"a": [1, "x", None, {"b": []}]}] * 5000}, "Patient")
