"""Normal and urgent bounds of the vital signs, read from data (``schemas/sheets/vital-ranges.json``): a network
with its own protocol changes a file, not code. A file that cannot be used is refused at load with the file and
entry named, never half-read."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from services.kit.settings import REPO_ROOT

DEFAULT_RANGES = REPO_ROOT / "schemas" / "sheets" / "vital-ranges.json"


_URGENT_KEYS = ("below", "atOrAbove")


class VitalRangesError(ValueError):
    """A ranges file that cannot be used; the message names the file and the offending entry."""


@dataclass(frozen=True)
class VitalRange:
    link_id: str
    unit: str
    normal_low: float
    normal_high: float
    urgent: dict[str, float]  # "below" / "atOrAbove" → bound; either may be absent
    messages: dict[str, tuple[str, str]]  # same keys → (Japanese, English) templates with {value} and {bound}

    def interpretation(self, value: float) -> str:
        if "below" in self.urgent and beyond("below", value, self.urgent["below"]):
            return "LL"
        if "atOrAbove" in self.urgent and beyond("atOrAbove", value, self.urgent["atOrAbove"]):
            return "HH"
        if value < self.normal_low:
            return "L"
        return "H" if value > self.normal_high else "N"


@dataclass(frozen=True)
class VitalRanges:
    by_link_id: dict[str, VitalRange]

    @classmethod
    def load(cls, path: Path) -> VitalRanges:
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as error:
            raise VitalRangesError(f"{path}: cannot be read as JSON: {error}") from None
        vitals = data.get("vitals") if isinstance(data, dict) else None
        if not isinstance(vitals, dict) or not vitals:
            raise VitalRangesError(f"{path}: needs a non-empty object 'vitals' keyed by linkId")
        return cls({link_id: _parse_range(path, link_id, entry) for link_id, entry in vitals.items()})


def _parse_range(path: Path, link_id: str, entry: Any) -> VitalRange:
    def fail(why: str) -> VitalRangesError:
        return VitalRangesError(f"{path}: vitals[{link_id!r}]: {why}")

    if not isinstance(entry, dict):
        raise fail("must be an object")
    normal, urgent, messages = entry.get("normal"), entry.get("urgent"), entry.get("messages")
    if not isinstance(entry.get("unit"), str) or not entry["unit"]:
        raise fail("needs a UCUM 'unit'")
    if not isinstance(normal, dict) or not all(is_number(normal.get(key)) for key in ("low", "high")):
        raise fail("'normal' needs numbers 'low' and 'high'")
    if normal["low"] > normal["high"]:
        raise fail("'normal': low is above high")
    if not isinstance(urgent, dict) or set(urgent) - set(_URGENT_KEYS) or not all(map(is_number, urgent.values())):
        raise fail(f"'urgent' takes numbers under {' / '.join(_URGENT_KEYS)} only")
    # An urgent bound inside the normal range would call a normal reading urgent.
    if urgent.get("below", -math.inf) > normal["low"] or urgent.get("atOrAbove", math.inf) <= normal["high"]:
        raise fail("the urgent bounds must lie outside the normal range")
    return VitalRange(link_id, entry["unit"], normal["low"], normal["high"], dict(urgent),
                      {key: _parse_message(fail, messages, key) for key in urgent})


def _parse_message(fail: Callable[[str], VitalRangesError], messages: Any, key: str) -> tuple[str, str]:
    message = messages.get(key) if isinstance(messages, dict) else None
    ja, en = (message.get("ja"), message.get("en")) if isinstance(message, dict) else (None, None)
    if not (isinstance(ja, str) and ja and isinstance(en, str) and en):
        raise fail(f"'messages.{key}' needs 'ja' and 'en' texts")
    try:
        # Formatted once here, so a stray brace fails at load, not when the first urgent reading comes in.
        fill(ja, 1, 1), fill(en, 1, 1)
    except (KeyError, IndexError, ValueError) as error:
        raise fail(f"'messages.{key}' may use only {{value}} and {{bound}}: {error!r}") from None
    return ja, en


@cache
def default_ranges() -> VitalRanges:
    return VitalRanges.load(DEFAULT_RANGES)


def is_number(value: Any) -> bool:
    # JSON true would pass isinstance(.., int); NaN and infinities are no reading and no valid FHIR decimal.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def beyond(key: str, value: float, bound: float) -> bool:
    # "below" is strict and "atOrAbove" is not, as clinical rules are written: urgent at 38.0 °C, below 35.0 °C.
    return value < bound if key == "below" else value >= bound


def fill(text: str, value: float, bound: float) -> str:
    # str() keeps what the recorder wrote: 128 stays 128, 38.0 stays 38.0.
    return text.format(value=value, bound=bound)
