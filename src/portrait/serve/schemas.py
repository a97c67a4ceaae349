"""Request and response shapes of the API (they make ``/openapi.json``).

Times are RFC 3339 UTC strings. Profile ``features`` follow the profile
contract of DESIGN.md (a keyed feature is an object key -> value). Handlers
return these shapes already serialised (orjson), so the models document the
API and the schema tests check that the documents hold.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portrait.serve.settings import MAX_BATCH_EVENTS


class EventIn(BaseModel):
    """One event (the event contract v1). Bad events are rejected one by one, not the request."""

    model_config = ConfigDict(extra="allow")

    user_id: str
    ts: str | float = Field(description="RFC 3339 with an offset, or epoch seconds / ms")
    type: str
    event_id: str | None = None
    item_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    rating: float | None = None
    text: str | None = None
    lat: float | None = None
    lon: float | None = None
    attrs: dict[str, Any] | None = None


class EventBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(max_length=MAX_BATCH_EVENTS)


class EventResult(BaseModel):
    index: int = Field(description="0-based position of the event in the request")
    status: Literal["accepted", "duplicate", "rejected", "queued"]
    event_id: str | None = None
    reason: str | None = Field(None, description="why it was rejected; names the field")


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    queued: int = Field(description="events queued but not yet committed (async=1 only)")
    durable: bool = Field(description="true when the events were committed before replying")
    watermark: str | None
    results: list[EventResult]


class Profile(BaseModel):
    user_id: str
    as_of: str | None
    features: dict[str, Any]
    segments: list[str]
    models: dict[str, Any] | None = None
    explanation: dict[str, Any] | None = None
    masked: list[str] | None = Field(
        None, description="personal features (the spec's privacy.personal_features) left "
                          "out for keys without the admin scope")


class HistoryPoint(BaseModel):
    at: str
    values: dict[str, Any]


class History(BaseModel):
    user_id: str
    start: str = Field(description="the user's first event")
    end: str = Field(description="now: the watermark")
    features: list[str]
    points: list[HistoryPoint]


class LoggedEvent(BaseModel):
    """One logged event: its non-null fields only (absent = null)."""

    event_id: str
    ts: str
    type: str
    item_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    rating: float | None = None
    text: str | None = None
    lat: float | None = None
    lon: float | None = None
    attrs: dict[str, Any] | None = None
    masked: list[str] | None = Field(
        None, description="personal fields left out: only admin keys see them")


class UserEvents(BaseModel):
    user_id: str
    count: int = Field(description="events listed (at most limit)")
    events: list[LoggedEvent] = Field(description="newest first (event time, then event_id)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reason: str
    sources: list[str]


class Recommendations(BaseModel):
    user_id: str
    as_of: str | None
    items: list[RecommendedItem]


class SegmentInfo(BaseModel):
    name: str
    rule: str
    features: list[str]
    size: int


class PrivacyInfo(BaseModel):
    """How an aggregate answer was made differentially private (read_aggregate keys)."""

    mechanism: Literal["discrete_laplace"]
    epsilon: float
    sensitivity: int
    scale: float
    budget_spent: float
    budget: float


class Segments(BaseModel):
    as_of: str | None
    population: int
    segments: list[SegmentInfo]
    privacy: PrivacyInfo | None = Field(None, description="read_aggregate keys: the noise")


class Members(BaseModel):
    segment: str
    as_of: str | None
    total: int
    offset: int
    limit: int
    members: list[str]


class SegmentChange(BaseModel):
    seq: int
    ts: str
    user_id: str
    segment: str
    change: Literal["enter", "exit"]
    cause: str


class SegmentChanges(BaseModel):
    segment: str
    changes: list[SegmentChange]
    next_after: int | None = Field(description="pass as ?after= for the next page; null at end")


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=10_000,
                       description="a rule over features and model outputs")
    export: Literal["csv", "parquet"] | None = None
    at: str | None = Field(None, description="as of this time (default: the watermark)")


class ExportInfo(BaseModel):
    format: Literal["csv", "parquet"]
    path: str = Field(description="the file on the server")
    url: str = Field(description="GET it (read scope) to download the file")
    rows: int


class Audience(BaseModel):
    query: str
    as_of: str | None
    count: int
    population: int
    withheld_without_consent: int | None = Field(
        None, description="selected users left out: no advertising consent (null for "
                          "read_aggregate keys: an exact count would break the noise)")
    export: ExportInfo | None
    privacy: PrivacyInfo | None = Field(None, description="read_aggregate keys: the noise")


class HistogramBin(BaseModel):
    lo: float
    hi: float = Field(description="exclusive, except for the last bin")
    count: int


class Quantiles(BaseModel):
    p50: float | None
    p90: float | None
    p99: float | None


class Distribution(BaseModel):
    feature: str
    value_type: Literal["number", "time"] = Field(
        description="time: values (bins, quantiles) are epoch seconds")
    at: str | None = Field(description="the watermark")
    users: int
    nulls: int = Field(description="users without a value")
    bins: list[HistogramBin] = Field(
        description="equal-width bins over [min, max]; one when all values are equal")
    quantiles: Quantiles = Field(description="linear interpolation; null without values")
    privacy: PrivacyInfo | None = Field(None, description="read_aggregate keys: the noise")


class Drift(BaseModel):
    ref: str
    at: str
    population: list[dict[str, Any]]
    interest_shift: list[dict[str, Any]]
    bursts: list[dict[str, Any]]
    burst_rule: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    writer: bool
    queued: int
    watermark: str | None
    events: int
    users: int
    compaction_error: str | None = None  # background compaction stopped (data stays correct)


class ErasureReceipt(BaseModel):
    user_id: str
    erased_at: str
    found: bool
    removed: dict[str, int]  # events, state_rows, dead_letters, memberships, ... by kind
    kept: str

