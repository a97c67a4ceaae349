"""The JSON response of every route: orjson, so NumPy values and dates serialise fast."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSON(Response):
    """``application/json`` rendered by orjson (NaN becomes null, as JSON has no NaN)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
