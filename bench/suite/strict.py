"""The base of every suite model: strict types, no unknown keys (with a did-you-mean), no inf or nan."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from bench.suite.reading import shorten


class Strict(BaseModel):
    """Strict types, no unknown keys, no inf/nan, and an unknown key reported with a did-you-mean."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    hint = difflib.get_close_matches(str(key), allowed, n=1)
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key",
                        {
                            "key": shorten(key, 40) if not isinstance(key, str) or len(key) > 40 else key,
                            "allowed": ", ".join(allowed),
                            "hint": hint[0] if hint else "",
                        },
                    )
        return data
