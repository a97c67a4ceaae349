"""``python -m portrait.serve`` prints the OpenAPI document (to refresh docs/openapi.json)."""

from __future__ import annotations

import sys

import orjson

from portrait.serve import openapi_document

sys.stdout.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
