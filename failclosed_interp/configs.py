"""JSON round-trips for the frozen per-stage config dataclasses (nested configs, tuples as lists, infinite
floats as "inf" / "-inf", which JSON cannot hold, read back as floats where the field holds floats).

A field added after results were recorded can be marked `field(..., metadata=ADDED_LATER)`: left at its
default it is left out of the dict, so a config that does not use it keeps the JSON (and so the identity of
its recorded results) it had before the field existed; reading a dict without it gives the default."""

from __future__ import annotations

import dataclasses
import math
import typing


ADDED_LATER = {"omit_default": True}  # field metadata: see the module docstring


def _at_omitted_default(config, f: dataclasses.Field) -> bool:
    if not f.metadata.get("omit_default"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(config, f.name) == default


def config_to_dict(config) -> dict:
    """A JSON-ready dict: nested dataclasses become dicts, tuples become lists, infinities strings (fields
    marked ADDED_LATER left out while at their default)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not _at_omitted_default(value, f)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value

    return plain(config)


def config_from_dict(cls, data: dict):
    """Rebuild `cls` from `config_to_dict` output; unknown keys are an error that lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        nested = [t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)]
        if isinstance(value, dict) and nested:
            value = config_from_dict(nested[0], value)
        elif isinstance(value, list):
            value = tuple(_infinity(v, hints[key]) for v in value)
        else:
            value = _infinity(value, hints[key])
        values[key] = value
    return cls(**values)


class JsonConfig:
    """Base of the frozen per-stage configs: `to_dict()` for JSON and `from_dict()` back, written once."""

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (nested configs included)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """The config `to_dict` wrote; unknown keys are an error that lists the known ones."""
        return config_from_dict(cls, data)


def _infinity(value, hint):
    """float("inf") for the "inf" / "-inf" that config_to_dict wrote for a float field; anything else as is."""
    return float(value) if value in ("inf", "-inf") and "float" in str(hint) else value
