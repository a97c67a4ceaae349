"""One error hierarchy for the whole project.

Every error names what is wrong (the value, the id, the file and line) and
chains its cause. ``http_status`` is the single place where errors map to HTTP
status codes, so the API and the CLI agree on what each failure means.
"""

from __future__ import annotations


class PortraitError(Exception):
    """Base class of every error portrait raises on purpose."""

    http_status = 500
    exit_code = 1


class SpecError(PortraitError):
    """The profile spec is invalid (unknown kind, field, duration, bad rule...).

    ``line`` is the 1-based line of the problem in the spec file, when known.
    """

    http_status = 422
    exit_code = 2

    def __init__(self, message: str, *, source: str = "<spec>", line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class RuleError(SpecError):
    """A segment rule could not be parsed or refers to something unknown."""


class SourceError(PortraitError):
    """An input source cannot be used at all (missing file, directory, unknown format)."""

    http_status = 400
    exit_code = 2


class ValidationError(PortraitError):
    """One event breaks the event contract. Normally caught and dead-lettered."""

    http_status = 422


class StoreError(PortraitError):
    """The store is missing, corrupt, or used inconsistently (e.g. no spec yet)."""

    http_status = 500
    exit_code = 2


class UnknownUserError(PortraitError):
    """A profile was asked for a user the store has never seen."""

    http_status = 404
    exit_code = 1


class UnknownSegmentError(PortraitError):
    """A segment name that the spec does not define."""

    http_status = 404
    exit_code = 1


class UsageError(PortraitError):
    """Unusable arguments (bad --at time, conflicting options)."""

    http_status = 400
    exit_code = 2


def http_status(exc: BaseException) -> int:
    """The HTTP status code for ``exc`` (500 for anything unexpected)."""
    return exc.http_status if isinstance(exc, PortraitError) else 500


class DatasetError(PortraitError):
    """A public dataset could not be fetched, verified or converted (``portrait.datasets``)."""

    http_status = 502
    exit_code = 2


class UnknownDatasetError(DatasetError):
    """A dataset name that ``portrait.datasets.DATASETS`` does not list."""

    http_status = 404


class UnknownFeatureError(PortraitError):
    """A feature name that the spec does not define."""

    http_status = 404
    exit_code = 1


class UnknownTargetError(UnknownFeatureError, UnknownSegmentError):
    """An ``explain`` target that is neither a feature nor a segment of the spec."""


class BadRequestError(PortraitError):
    """An HTTP request that cannot be used: malformed JSON, a body of the wrong shape."""

    http_status = 400
    exit_code = 2


class UnprocessableRequestError(BadRequestError):
    """Well-formed JSON of the wrong shape (not an event object or ``{"events": [...]}``)."""

    http_status = 422


class PayloadTooLargeError(BadRequestError):
    """A request body or batch above the server's limits (bytes or events)."""

    http_status = 413


class AuthenticationError(PortraitError):
    """No API key, or one the server does not know."""

    http_status = 401
    exit_code = 2


class PermissionDeniedError(PortraitError):
    """A known API key without the scope the request needs."""

    http_status = 403
    exit_code = 2


class BudgetExhaustedError(PermissionDeniedError):
    """A key without admin scope whose differential-privacy budget cannot pay for a query."""


class NotFoundError(PortraitError):
    """A route, or a file behind a route (an audience export), that does not exist."""

    http_status = 404
    exit_code = 1


class ModelNotReadyError(UsageError):
    """A model-backed answer before the model was trained (``portrait models train``)."""

    http_status = 409


class UnavailableError(PortraitError):
    """The service cannot take the request now (ingest queue full, writer stopped)."""

    http_status = 503
    exit_code = 2
