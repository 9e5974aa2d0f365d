"""Dataset names: ``<source>[?key=value&...]``, parsed in one place, and each dataset's short display name.

A dataset string identifies data (the ``dataset`` column, part of ``trial_id``). Its source is a registry name
(``cifar10``), ``imagefolder:<path>`` or ``hf:<hub id | path | imagefolder:path>``; options follow a ``?`` as
``key=value`` pairs joined by ``&`` (values percent-quoted where needed). ``group`` and ``display_name`` change
no data (nor the prepared-data fingerprint); the ``hf:`` options (columns, splits, config, revision) do.
This module imports nothing heavy, so the result schema can derive display names from it.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

IMAGEFOLDER_PREFIX = "imagefolder:"
HF_PREFIX = "hf:"
HF_IMAGEFOLDER = "imagefolder:"  # hf:imagefolder:<path>: the `datasets` imagefolder builder on a folder

DISPLAY_OPTIONS = ("group", "display_name")  # change no data
HF_DATA_OPTIONS = ("config", "revision", "image_column", "label_column", "train_split", "test_split")
OPTIONS: dict[str, tuple[str, ...]] = {
    "registry": ("display_name",),
    "imagefolder": DISPLAY_OPTIONS,
    "hf": DISPLAY_OPTIONS + HF_DATA_OPTIONS,
}
_DISPLAY_PATTERN = re.compile(r"^\w[\w.+-]{0,63}$")


class DatasetNameError(ValueError):
    """A malformed dataset string (the caller turns it into its own one-line error)."""


@dataclass(frozen=True)
class DatasetRef:
    """A parsed dataset string: `kind` (registry | imagefolder | hf), `target` (the registry name, the folder
    path, or what follows ``hf:``) and its options in the order written."""

    text: str
    kind: str
    target: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The string without its options."""
        return self.text.partition("?")[0] if self.options else self.text

    def data_options(self) -> dict[str, str]:
        """The options that change the data (what the fingerprint must cover)."""
        return {k: v for k, v in self.options.items() if k not in DISPLAY_OPTIONS}


def _kind(base: str) -> tuple[str, str]:
    if base.startswith(IMAGEFOLDER_PREFIX):
        return "imagefolder", base[len(IMAGEFOLDER_PREFIX) :]
    if base.startswith(HF_PREFIX):
        return "hf", base[len(HF_PREFIX) :]
    return "registry", base


def _parse_query(query: str) -> dict[str, str] | None:
    """`k=v&k=v` -> dict; None when `query` is not of that shape (then the `?` belongs to the path)."""
    pairs = [part.partition("=") for part in query.split("&")]
    if not query or any(not sep or not re.fullmatch(r"[a-z_]+", key) for key, sep, _ in pairs):
        return None
    return {key: urllib.parse.unquote(value) for key, _, value in pairs}


def parse_dataset_name(text: str) -> DatasetRef:
    """Split `text` into source and options; DatasetNameError for an unknown or repeated option, an empty
    target, a bad display name. Nothing is looked up: the registry checks the name, the loaders the path."""
    base, sep, query = text.rpartition("?")
    options = _parse_query(query) if sep else None
    if options is None:
        base, options = text, {}
    kind, target = _kind(base)
    allowed = OPTIONS[kind]
    for key in options:
        if key not in allowed:
            raise DatasetNameError(f"unknown option '{key}' (a {kind} dataset takes {', '.join(allowed)})")
    if query.count("&") + 1 != len(options) and options:
        raise DatasetNameError("an option is given twice")
    if not target.strip():
        what = "path" if kind == "imagefolder" else "hub id or path" if kind == "hf" else "name"
        raise DatasetNameError(f"expected '{base}<{what}>', the {what} is empty")
    for key, value in options.items():
        if not value:
            raise DatasetNameError(f"option '{key}' is empty")
    display = options.get("display_name")
    if display is not None and not _DISPLAY_PATTERN.match(display):
        raise DatasetNameError(
            f"display_name '{display}': expected 1-64 letters, digits, '_', '.', '+' or '-' (starting with a letter "
            "or digit)"
        )
    return DatasetRef(text, kind, target, options)


def with_options(text: str, extra: dict[str, str]) -> str:
    """`text` with `extra` options added (DatasetNameError when one is already in `text`). Options keep the
    order written, `extra` after them, so a string without `extra` is returned unchanged."""
    ref = parse_dataset_name(text)
    given = [key for key in extra if key in ref.options]
    if given:
        raise DatasetNameError(f"option '{given[0]}' is given both in the name and as a key")
    if not extra:
        return text
    query = "&".join(f"{k}={urllib.parse.quote(v, safe='+-_.~/:')}" for k, v in {**ref.options, **extra}.items())
    text = f"{ref.base}?{query}"
    parse_dataset_name(text)
    return text


def _last_part(path: str) -> str:
    return path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def default_display_name(ref: DatasetRef) -> str:
    """Registry datasets: their name; image folders: the folder's name; ``hf:``: the hub id's last part or
    the folder's name."""
    if ref.kind == "registry":
        return ref.target
    target = ref.target
    if ref.kind == "hf" and target.startswith(HF_IMAGEFOLDER):
        target = target[len(HF_IMAGEFOLDER) :]
    return _last_part(target) or ref.base


def display_name(text: str) -> str:
    """The short name tables, figures and trackers show for the dataset string `text`: its ``display_name``
    option, else `default_display_name`. Never raises: a string this version cannot parse (a plug-in's, an
    older one's) shows its last path part without options."""
    try:
        ref = parse_dataset_name(text)
    except DatasetNameError:
        return _last_part(text.partition("?")[0]) or text
    return ref.options.get("display_name") or default_display_name(ref)


def identity_name(text: str) -> str:
    """`text` without its ``display_name`` option: what a trial's identity holds, so renaming a dataset's
    display keeps its trials' ids. Unparseable strings are returned as they are."""
    try:
        ref = parse_dataset_name(text)
    except DatasetNameError:
        return text
    if "display_name" not in ref.options:
        return text
    kept = {k: v for k, v in ref.options.items() if k != "display_name"}
    return with_options(ref.base, kept)
