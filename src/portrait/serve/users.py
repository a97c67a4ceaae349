"""``DELETE /v1/users/{user_id}``: erase a user (admin scope); the receipt says what went.

The erasure (:mod:`portrait.privacy.erasure`) runs in the writer thread
between two commits, so events posted before the request are committed (and
erased with the rest) and none can interleave; the live view is rebuilt
without the user before the reply, and every reader cache is dropped (the
recommender's in-memory ALS factors included).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from portrait.engine.engine import Engine
from portrait.serve.auth import Admin
from portrait.serve.problems import PROBLEM_RESPONSES
from portrait.serve.responses import JSON
from portrait.serve.schemas import ErasureReceipt
from portrait.serve.state import server

router = APIRouter(tags=["privacy"], responses=PROBLEM_RESPONSES)


@router.delete("/v1/users/{user_id:path}", response_model=ErasureReceipt,
               summary="Erase a user and everything derived from them")
async def delete_user(request: Request, user_id: str, key: Admin) -> JSON:
    """Events, profile, dead letters, segment log, model factors; forgetting an unknown user
    is not an error (``found`` is false)."""
    from portrait.privacy.erasure import forget

    st = server(request)

    def erase(engine: Engine) -> dict[str, Any]:
        receipt = forget(engine, user_id)
        st.live.publish_all(engine)
        return receipt

    st.record(key, "user.erase", user_id)  # before: the hash needs no data of the user
    receipt = await asyncio.wrap_future(st.writer().call(erase))
    st.live.drop(user_id)
    st.readers.invalidate()
    return JSON(receipt)
