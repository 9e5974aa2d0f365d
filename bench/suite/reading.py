"""Reading a suite file as hostile input: strict YAML, then ``${VAR}`` expansion.

A ``yaml.SafeLoader`` subclass that also refuses anchors and aliases (alias bombs), duplicate keys, merge keys
and deep nesting, on a file capped in size; every failure becomes one ``UserError`` line naming the file and
the line, never another exception.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserError

MAX_FILE_BYTES = 1 << 20  # a real suite is a few kB; anything near this is a mistake or an attack
MAX_NESTING = 32  # deeper YAML would only exhaust the recursive composer


# ---------------------------------------------------------------------------------------------------------
# Reading YAML safely


class _SuiteLoader(yaml.SafeLoader):
    """SafeLoader that also refuses anchors/aliases, merge keys, duplicate keys and deep nesting.

    It reads `1e-3` as a number (YAML 1.2; PyYAML's 1.1 rules would make it the string "1e-3"), and reads
    `2024-01-01` as a string: a date has no place in a suite, and PyYAML's date constructor raises a bare
    ValueError on `2024-13-45`.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "anchors and aliases (&name / *name) are not allowed in a suite file; write the values out",
                event.start_mark,
            )
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", event.start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        None, None, "merge keys (<<) are not allowed in a suite file", key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark
                    ) from None
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {first_line[key] + 1})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_text(path: Path) -> str:
    label = str(path)
    try:
        if not path.exists():
            raise UserError(f"{label}: no such suite file")
        if path.is_dir():
            raise UserError(f"{label}: is a directory, expected a suite YAML file")
        if not path.is_file():
            raise UserError(f"{label}: not a regular file, expected a suite YAML file")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError(f"{label}: cannot read the suite file ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{label}: larger than {MAX_FILE_BYTES // (1 << 20)} MiB; a suite file is a few kB of YAML")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(
            f"{label}:{line}: not valid UTF-8 text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); save the suite as UTF-8"
        ) from None


def _yaml_error_line(label: str, text: str, error: Exception) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or "invalid YAML"
        if "'\\t'" in problem:
            problem = "a tab character where YAML expects spaces (indent with spaces, not tabs)"
        elif "could not determine a constructor" in problem:
            problem += " (tags that build objects are not allowed)"
        context = f" ({error.context})" if error.context else ""
        return f"{label}:{mark.line + 1}:{mark.column + 1}: {problem}{context}"
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return f"{label}:{line}:{column}: character #x{code:04x} is not allowed in YAML"
    return f"{label}: invalid YAML: {error}"


def load_yaml(path: Path) -> dict[str, Any]:
    label = str(path)
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise UserError(_yaml_error_line(label, text, error)) from None
    except (ValueError, OverflowError, RecursionError) as error:  # explicit tags such as !!timestamp
        raise UserError(f"{label}: invalid YAML value ({type(error).__name__}: {error})") from None
    if data is None:
        raise UserError(
            f"{label}: the suite file is empty; expected a mapping with name, backbones, datasets, grid and train"
        )
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a mapping (key: value lines) at the top level, got a {type_name(data)}")
    return data


# ---------------------------------------------------------------------------------------------------------
# ${VAR} expansion in path-valued strings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(value: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}` (and a leading `~`) in a path; an unset VAR is a mistake."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        raise ValueError(
            f"expected environment variable {name} to be set (or write ${{{name}:-default}}), got it unset in {value!r}"
        )

    expanded = _VAR.sub(substitute, value)
    if "${" in _VAR.sub("", value):
        raise ValueError(f"expected ${{NAME}} or ${{NAME:-default}}, got a malformed reference in {value!r}")
    return os.path.expanduser(expanded)


def expand_optional(value: str | None) -> str | None:
    return None if value is None else expand_vars(value)


def expand_dataset_name(name: str) -> str:
    prefix = "imagefolder:"
    return prefix + expand_vars(name[len(prefix) :]) if name.startswith(prefix) else name


def type_name(value: Any) -> str:
    names = {
        dict: "mapping",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
