"""One user: ``/v1/profiles/{user_id}`` (+ ``/history``, ``/events``) and recommendations.

A user id may hold any character, ``/`` included (percent-encode it). The
history and events routes are matched first, so the profile of a user whose
id ends in ``/history`` or ``/events`` cannot be read here (its history and
events can).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from portrait.engine.engine import Engine
from portrait.errors import PermissionDeniedError
from portrait.events.schema import PERSONAL_FIELDS
from portrait.serve import queries
from portrait.serve.auth import Read
from portrait.serve.problems import PROBLEM_RESPONSES
from portrait.serve.responses import JSON
from portrait.serve.schemas import History, Profile, Recommendations, UserEvents
from portrait.serve.state import server

router = APIRouter(tags=["profiles"], responses=PROBLEM_RESPONSES)
AT = Query(description="as of this time: RFC 3339 with an offset, a date, or epoch s/ms")


@router.get("/v1/profiles/{user_id:path}/history", response_model=History,
            summary="Feature values over time")
def get_history(
    request: Request,
    user_id: str,
    key: Read,
    feature: Annotated[list[str] | None, Query(
        description="feature name (repeat for several; default: all)")] = None,
    points: Annotated[int, Query(ge=1, le=500, description="evenly spaced times")] = 20,
) -> JSON:
    """Values at ``points`` times from the user's first event to now (exact time travel)."""
    st = server(request)
    readers = st.readers
    hidden = st.masked_features(key)
    if hidden & set(feature or ()):
        raise PermissionDeniedError(
            f"{', '.join(sorted(hidden & set(feature or ())))}: personal features "
            "(the spec's privacy.personal_features) are shown to admin keys only")
    out = readers.read(lambda e: queries.history(readers, e, user_id, feature or [], points))
    st.record(key, "history.read", user_id)
    if hidden:
        out = {**out, "features": [f for f in out["features"] if f not in hidden],
               "points": [{**p, "values": {k: v for k, v in p["values"].items()
                                           if k not in hidden}} for p in out["points"]]}
    return JSON(out)


@router.get("/v1/profiles/{user_id:path}/events", response_model=UserEvents,
            summary="A user's most recent events")
def get_events(
    request: Request,
    user_id: str,
    key: Read,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many events")] = 50,
) -> JSON:
    """The user's logged events, newest first (non-null fields only).

    Personal fields (free ``text``, ``lat``/``lon``, ``attrs``) are shown to admin
    keys only; for other keys they are left out and named in the event's ``masked``."""
    st = server(request)
    readers = st.readers
    out = readers.read(lambda e: queries.events(readers, e, user_id, limit))
    st.record(key, "events.read", user_id)
    if "admin" not in key.scopes:
        out = {**out, "events": [_masked(ev) for ev in out["events"]]}
    return JSON(out)


MASKED_FIELDS = tuple(sorted(("attrs", *PERSONAL_FIELDS)))


def _masked(event: dict[str, object]) -> dict[str, object]:
    hidden = [f for f in MASKED_FIELDS if f in event]
    if not hidden:
        return event
    return {**{k: v for k, v in event.items() if k not in hidden}, "masked": hidden}


@router.get("/v1/profiles/{user_id:path}", response_model=Profile, summary="A user's profile")
async def get_profile(
    request: Request,
    user_id: str,
    key: Read,
    at: Annotated[str | None, AT] = None,
    explain: Annotated[str | None, Query(
        description="a feature, feature['key'] or segment: the events behind it")] = None,
) -> JSON:
    """The profile now (the watermark) or as of ``at``; ``models`` when models are trained.

    At the watermark (or later) it is answered on the event loop from the
    writer's live view (:mod:`portrait.serve.live`, tens of microseconds);
    time travel, explanations and model outputs go to a worker thread.
    """
    st = server(request)
    readers = st.readers
    at_us = queries.time_arg(at)
    hidden = st.masked_features(key)
    if explain is not None and hidden and explain.split("[", 1)[0] in hidden:
        raise PermissionDeniedError(f"{explain}: the events behind a personal feature are "
                                    "shown to admin keys only")
    if explain is None and not readers.has_models():
        out = st.live.profile(user_id, at_us)
        if out is not None:
            st.record(key, "profile.read", user_id)
            return JSON(_hide(out, hidden))

    def read(engine: Engine) -> dict[str, object]:
        out = queries.profile(readers, engine, user_id, at_us)
        if explain is not None:
            out["explanation"] = queries.explanation(engine, user_id, explain, at_us)
        return out

    answer = await run_in_threadpool(readers.read, read)
    st.record(key, "profile.read", user_id)
    return JSON(_hide(answer, hidden))


def _hide(profile: dict[str, Any], hidden: frozenset[str]) -> dict[str, Any]:
    """The profile without the features in ``hidden``, which ``masked`` names."""
    if not hidden:
        return profile
    feats = profile["features"]
    gone = [f for f in feats if f in hidden]
    return {**profile, "features": {k: v for k, v in feats.items() if k not in hidden},
            "masked": gone}


@router.get("/v1/recommendations/{user_id:path}", response_model=Recommendations,
            summary="Top-k items with reasons")
def get_recommendations(
    request: Request,
    user_id: str,
    key: Read,
    k: Annotated[int, Query(ge=1, le=1000)] = 20,
    diversity: Annotated[float, Query(ge=0.0, le=1.0, description="MMR: 0 = relevance")] = 0.0,
) -> JSON:
    """Folds the user's current events into the model (unknown users: cold start)."""
    st = server(request)
    readers = st.readers
    out = readers.read(lambda e: queries.recommendations(readers, e, user_id, k, diversity))
    st.record(key, "recommendations.read", user_id)
    return JSON(out)
