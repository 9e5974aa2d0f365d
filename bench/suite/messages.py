"""A pydantic validation error as one line: the file, the key path, what was expected and what was given,
e.g. ``smoke.yaml: grid.freeze[2]: expected ..., got ...``."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import ValidationError

from bench.errors import UserError
from bench.suite.reading import shorten, type_name
from bench.suite.spec import BackboneSpec, DatasetSpec, SuiteSpec

# ---------------------------------------------------------------------------------------------------------
# Error messages: one line, with the key path


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _bounds(ctx: dict[str, Any]) -> str:
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{ops[key]} {ctx[key]}" for key in ops if key in ctx)


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(error: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(key path, 'expected ..., got ...') for one pydantic error."""
    loc, kind, ctx, got = tuple(error["loc"]), error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "unknown_key":
        hint = f" (did you mean {ctx['hint']}?)" if ctx["hint"] else ""
        return (*loc, ctx["key"]), f"unknown key{hint}; expected one of: {ctx['allowed']}"
    if kind == "missing":
        return loc, "expected a value (required key), got nothing"
    if kind == "duplicate":
        value = ctx["value"]
        shown = value.name if isinstance(value, (BackboneSpec, DatasetSpec)) else value
        return (*loc, ctx["index"]), (
            f"expected each value once, got {shorten(shown)}, the same as {_key_path(loc)}[{ctx['first']}]"
        )
    if kind == "search_value":  # raised by SuiteSpec._search_fits_train, which knows the key path
        return tuple(ctx["key"].split(".")), ctx["message"]
    if kind == "lr_missing":
        return ("train", "lr"), (
            f"expected an lr for strategy {ctx['strategy']} (freeze {shorten(ctx['freeze'])}) "
            "or a default key, got neither"
        )
    if kind == "too_short":
        return loc, f"expected a non-empty list, got {shorten(got)}"
    if kind == "string_pattern_mismatch":
        return loc, (
            "expected a name of letters, digits, '_', '.' and '-' that starts with a letter or digit "
            f"(it names the results folder), got {shorten(got)}"
        )
    if kind == "string_too_long":
        return loc, f"expected at most {ctx['max_length']} characters, got {len(got)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return loc, f"expected a number {_bounds(ctx)}, got {shorten(got)}"
    if kind == "literal_error":
        hint = (
            difflib.get_close_matches(got, re.findall(r"'([^']*)'", ctx["expected"]), n=1)
            if isinstance(got, str)
            else []
        )
        extra = f" (did you mean {hint[0]}?)" if hint else ""
        return loc, f"expected one of {ctx['expected']}, got {shorten(got)}{extra}"
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"]))
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {'null' if got is None else type_name(got) + ' ' + shorten(got)}"
    return loc, f"{error['msg']}, got {shorten(got)}"


def _lookup(tree: Any, loc: tuple[Any, ...]) -> bool:
    """Whether `loc` names something written in `tree` (used to blame the smoke block).

    Reaching a plain value early counts: `backbones: [x]` in the tree wrote `backbones[0].name`.
    """
    for part in loc:
        if isinstance(tree, dict):
            if part not in tree:
                return False
            tree = tree[part]
        elif isinstance(tree, list):
            if not (isinstance(part, int) and 0 <= part < len(tree)):
                return False
            tree = tree[part]
        else:
            return True
    return True


def validate_suite(label: str, data: dict[str, Any], smoke_block: dict[str, Any] | None = None) -> SuiteSpec:
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as errors:
        loc, message = _describe(errors.errors()[0])
        if smoke_block is None:
            where = _key_path(loc) or "(top level)"
        elif _lookup(smoke_block, loc):
            where = _key_path(("smoke", *loc))
        else:
            where = f"{_key_path(loc) or '(top level)'} (with the smoke block merged)"
        more = len(errors.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise UserError(f"{label}: {where}: {message}{tail}") from None
