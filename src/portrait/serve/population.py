"""Many users: segments, members, change logs, audiences (+ exports), drift, distributions."""

from __future__ import annotations

import re
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse

from portrait.audience import export as write_export
from portrait.engine.engine import Engine
from portrait.errors import NotFoundError, PermissionDeniedError, UsageError
from portrait.privacy.consent import counted
from portrait.serve import queries
from portrait.serve.auth import Aggregate, Read
from portrait.serve.problems import PROBLEM_RESPONSES
from portrait.serve.responses import JSON
from portrait.serve.schemas import (
    Audience,
    AudienceIn,
    Distribution,
    Drift,
    Members,
    SegmentChanges,
    Segments,
)
from portrait.serve.state import server
from portrait.timeutil import format_us

router = APIRouter(tags=["population"], responses=PROBLEM_RESPONSES)
AT = Query(description="as of this time: RFC 3339 with an offset, a date, or epoch s/ms")
EXPORT_NAME = re.compile(r"^audience-\d{8}T\d{6}Z-[0-9a-f]{8}\.(csv|parquet)$")
MAX_INT = 2**53  # offsets and cursors: exact in JSON everywhere
MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


@router.get("/v1/segments", response_model=Segments, summary="Segments: rules and sizes")
def get_segments(request: Request, key: Aggregate) -> JSON:
    """Rules and sizes; for keys with only ``read_aggregate`` the sizes and the population
    are differentially private (``privacy`` says how)."""
    st = server(request)
    readers = st.readers
    out, version = readers.read(lambda e: (queries.segments(readers, e), readers.version(e)))
    if key.private:
        segs = out["segments"]
        noised = st.ledger.noisy(key.key_id, ("segments", version),
                                 [out["population"], *(s["size"] for s in segs)],
                                 sensitivity=1 + len(segs))  # one user: population + each
        out = {**out, "population": max(0, noised.values[0]),
               "segments": [{**seg, "size": max(0, v)}
                            for seg, v in zip(segs, noised.values[1:], strict=True)],
               "privacy": noised.to_json()}
    return JSON(out)


@router.get("/v1/segments/{name}/members", response_model=Members,
            summary="Members of a segment (paged, sorted)")
def get_members(
    request: Request,
    name: str,
    _key: Read,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    at: Annotated[str | None, AT] = None,
) -> JSON:
    readers = server(request).readers
    at_us = queries.time_arg(at)
    return JSON(readers.read(
        lambda e: queries.members(readers, e, name, (offset, limit), at_us)))


@router.get("/v1/segments/{name}/changes", response_model=SegmentChanges,
            summary="Entries and exits of a segment (oldest first)")
def get_changes(
    request: Request,
    name: str,
    _key: Read,
    user: Annotated[str | None, Query(description="only this user")] = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT,
                                description="changes after this seq (cursor)")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> JSON:
    readers = server(request).readers
    return JSON(readers.read(lambda e: queries.changes(e, name, user, (after, limit))))


@router.post("/v1/audiences", response_model=Audience, summary="Count (and export) an audience")
def post_audience(request: Request, spec: AudienceIn, key: Aggregate) -> JSON:
    """A targeting query over features and model outputs; ``export`` writes the members.

    Keys with only ``read_aggregate`` get a differentially private count and may not export.
    """
    st = server(request)
    at_us = queries.time_arg(spec.at)
    if key.private and spec.export is not None:
        raise PermissionDeniedError(
            f"key {key.key_id} may read aggregates only: an export lists users (needs read)")

    def run(engine: Engine) -> dict[str, Any]:
        aud = queries.audience(st.readers, engine, spec.query, at_us)
        as_of = engine.store.meta().watermark if at_us is None else at_us
        return {"query": spec.query, "as_of": None if as_of is None else format_us(as_of),
                "count": aud.count, "population": aud.population,
                "withheld_without_consent": aud.withheld,
                "export": None if spec.export is None else _export(st.settings.db, aud,
                                                                    spec.export)}

    out, version = st.readers.read(lambda e: (run(e), st.readers.version(e)))
    if spec.export is not None:
        st.record(key, "audience.export", None,
                  f"{out['export']['rows']} users; query {spec.query!r}")
    if key.private:
        noised = st.ledger.noisy(key.key_id, ("audience", spec.query, at_us, version),
                                 [out["count"], out["population"]], sensitivity=2)
        out = {**out, "count": max(0, noised.values[0]), "withheld_without_consent": None,
               "population": max(0, noised.values[1]), "privacy": noised.to_json()}
    return JSON(out)


def _export(db: Any, aud: Any, fmt: str) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"audience-{stamp}-{secrets.token_hex(4)}.{fmt}"
    path = write_export(aud, queries.export_dir(db) / name)
    return {"format": fmt, "path": str(path), "url": f"/v1/exports/{name}", "rows": aud.count}


@router.get(
    "/v1/exports/{name}",
    summary="Download an audience export",
    response_class=FileResponse,
    responses={200: {"content": {m: {"schema": {"type": "string", "format": "binary"}}
                                 for m in MEDIA.values()},
                     "description": "the exported file"}},
)
def get_export(request: Request, name: str, _key: Read) -> FileResponse:
    directory = queries.export_dir(server(request).settings.db)
    path = directory / name
    if (not EXPORT_NAME.match(name) or not path.is_file()
            or path.resolve().parent != directory.resolve()):  # no link out of exports/
        raise NotFoundError(f"no audience export named {name!r}")
    return FileResponse(path, media_type=MEDIA[path.suffix[1:]], filename=name)


@router.get("/v1/drift", response_model=Drift, summary="Population drift, shifts, bursts")
def get_drift(
    request: Request,
    _key: Read,
    ref: Annotated[str | None, Query(description="reference time (default: at - 30 days)")]
    = None,
    at: Annotated[str | None, AT] = None,
    top: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> JSON:
    readers = server(request).readers
    ref_us, at_us = queries.time_arg(ref), queries.time_arg(at)
    return JSON(readers.read(lambda e: queries.drift(e, ref_us, at_us, top)))


@router.get("/v1/features/{name}/distribution", response_model=Distribution,
            summary="The population's distribution of one numeric feature")
def get_distribution(
    request: Request,
    name: str,
    key: Aggregate,
    *,
    bins: Annotated[int, Query(ge=1, le=1000, description="equal-width bins")] = 20,
    lo: Annotated[float | None, Query(description="public lower bound (read_aggregate keys)")
                  ] = None,
    hi: Annotated[float | None, Query(description="public upper bound (read_aggregate keys)")
                  ] = None,
) -> JSON:
    """Histogram and quantiles at the watermark; 400 for a keyed or string feature.

    Keys with only ``read_aggregate`` must give public bounds ``lo < hi`` (a private
    histogram cannot take its range from the data: min and max are someone's values);
    values are clamped into them, the counts get differential-privacy noise and the
    quantiles are read off the noisy histogram.
    """
    st = server(request)
    readers = st.readers
    if not key.private:
        return JSON(readers.read(lambda e: queries.distribution(readers, e, name, bins)))
    if lo is None or hi is None or not lo < hi:
        raise UsageError("a read_aggregate key needs public bounds: pass lo and hi (lo < hi) "
                         "in the feature's unit (epoch seconds for times)")
    bounds = (lo, hi)

    def exact(engine: Engine) -> tuple[dict[str, Any], Any]:
        spec = queries.distribution_feature(engine, name)
        pop = readers.population(engine)
        values = counted(engine.store, pop.values)[name]  # analytics consent
        return queries.bounded_distribution(spec, values, bins, bounds,
                                            pop.version[0]), readers.version(engine)

    out, version = readers.read(exact)
    counts = [b["count"] for b in out["bins"]]
    noised = st.ledger.noisy(key.key_id, ("distribution", name, bins, bounds, version),
                             [out["users"], out["nulls"], *counts], sensitivity=2)
    noisy_bins = [{**b, "count": max(0, v)} for b, v in zip(out["bins"], noised.values[2:],
                                                             strict=True)]
    return JSON({**out, "users": max(0, noised.values[0]), "nulls": max(0, noised.values[1]),
                 "bins": noisy_bins, "quantiles": queries.histogram_quantiles(noisy_bins),
                 "privacy": noised.to_json()})
