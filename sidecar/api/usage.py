"""Usage routes: ``POST /v1/usage``, ``POST /v1/events`` (202 once durably spooled), the dead
letters and the pipeline's stats."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import Field, WithJsonSchema, model_validator

from sidecar.api.errors import error_response
from sidecar.api.http import json_response, parse_json, read_body
from sidecar.services import SERVICES
from sidecar.usage.model import (
    KINDS,
    EventReport,
    Kind,
    UsageReport,
    parse_event_request,
    parse_usage_request,
)
from sidecar.usage.service import UsageService, UsageUnavailable, acceptance
from sidecar.validation import Model, ValidationError, checked, parse_number, validate

Report = TypeVar("Report", UsageReport, EventReport)

MAX_DEAD_LETTERS_PAGE = 1000
MAX_REPLAY_IDS = 10_000
# A dead letter's id: the SQLite spool's row number or the Redis spool's stream id ("ms-seq"),
# in ASCII digits only (not "¹" or "٣", which ``int`` then rejects), and at most 18 of them, so
# every part fits SQLite's signed 64-bit integers.
DEAD_LETTER_ID_PATTERN = r"^[0-9]{1,18}(-[0-9]{1,18})?$"
_DEAD_LETTER_ID = re.compile(DEAD_LETTER_ID_PATTERN, re.ASCII)


def _dead_letter_id(value: Any) -> str:
    if not isinstance(value, str) or _DEAD_LETTER_ID.fullmatch(value) is None:
        raise ValidationError("", "must be a dead-letter id (digits, or digits-digits)")
    return value


DeadLetterId = Annotated[
    str,
    checked(_dead_letter_id),
    WithJsonSchema({"type": "string", "pattern": DEAD_LETTER_ID_PATTERN}),
]


class DeadLetterReplay(Model):
    """`POST /v1/usage/dead-letters`: either `ids`, or `all: true`."""

    model_config = {
        "json_schema_extra": {
            "oneOf": [
                {
                    "required": ["ids"],
                    "properties": {"ids": {"type": "array"}, "all": {"enum": [False, None]}},
                },
                {
                    "required": ["all"],
                    "properties": {"all": {"const": True}},
                    "not": {"required": ["ids"]},
                },
            ]
        }
    }

    ids: Annotated[list[DeadLetterId], Field(min_length=1, max_length=MAX_REPLAY_IDS)] | None = None
    all: bool | None = None

    @model_validator(mode="after")
    def _ids_or_all(self) -> DeadLetterReplay:
        if self.all and self.ids is not None:
            raise ValidationError("ids", "give either ids or all, not both")
        if not self.all and self.ids is None:
            raise ValidationError("ids", "must be a non-empty array of dead-letter ids")
        return self


def _usage(request: web.Request) -> UsageService:
    return request.app[SERVICES].usage


def _unavailable(exc: UsageUnavailable) -> web.Response:
    return error_response(503, exc.code, exc.message, headers={"Retry-After": str(exc.retry_after)})


def _answer(items: list[dict[str, Any]], batch: bool, name: str) -> web.Response:
    if not batch:
        return json_response(items[0], status=202)
    accepted = sum(1 for item in items if item["status"] == "accepted")
    return json_response(
        {"accepted": accepted, "duplicates": len(items) - accepted, name: items}, status=202
    )


async def report_usage(request: web.Request) -> web.Response:
    service = _usage(request)
    return await _accept(request, parse_usage_request, service.accept_usages, "usages")


async def report_events(request: web.Request) -> web.Response:
    service = _usage(request)
    return await _accept(request, parse_event_request, service.accept_events, "events")


async def _accept(
    request: web.Request,
    parse: Callable[..., tuple[Sequence[Report], bool]],
    accept: Callable[[Sequence[Report]], Awaitable[list[bool]]],
    name: str,
) -> web.Response:
    """Parse all, spool all (or none), answer 202 with one acceptance per report."""
    max_reports = _usage(request).settings.max_reports_per_request
    body = await read_body(request)
    try:
        reports, batch = parse(body, max_reports=max_reports)  # one pass, from the bytes
    except ValidationError:
        # Say what is wrong as every route does: bad JSON and too deep a nesting first.
        reports, batch = parse(parse_json(body), max_reports=max_reports)
    try:
        stored = await accept(reports)
    except UsageUnavailable as exc:
        return _unavailable(exc)
    items = [acceptance(r, ok) for r, ok in zip(reports, stored, strict=True)]
    return _answer(items, batch, name)


async def list_dead_letters(request: web.Request) -> web.Response:
    for key in request.query:
        if key not in ("kind", "limit", "after"):
            raise ValidationError(key, "unknown query parameter")
    kind_text = request.query.get("kind")
    kind: Kind | None = None
    if kind_text:
        if kind_text not in KINDS:
            raise ValidationError("kind", f"must be one of {', '.join(KINDS)}")
        kind = "usage" if kind_text == "usage" else "event"
    limit = 100
    if request.query.get("limit"):
        limit = int(parse_number("limit", request.query["limit"], minimum=1))
        limit = min(limit, MAX_DEAD_LETTERS_PAGE)
    after = request.query.get("after") or None
    if after is not None:
        try:
            _dead_letter_id(after)
        except ValidationError as exc:
            raise exc.under("after") from None
    letters = await _usage(request).dead_letters(kind, limit, after)
    return json_response(
        {
            "deadLetters": [letter.to_json() for letter in letters],
            "next": letters[-1].id if len(letters) == limit else None,
        }
    )


async def replay_dead_letters(request: web.Request) -> web.Response:
    replay = validate(DeadLetterReplay, parse_json(await read_body(request)))
    replayed = await _usage(request).replay(None if replay.all else replay.ids)
    return json_response({"replayed": replayed}, status=202)


async def usage_stats(request: web.Request) -> web.Response:
    return json_response(await _usage(request).stats_json())


def usage_routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/usage", report_usage),
        web.post("/v1/events", report_events),
        web.get("/v1/usage/dead-letters", list_dead_letters, allow_head=False),
        web.post("/v1/usage/dead-letters", replay_dead_letters),
        web.get("/v1/usage/stats", usage_stats, allow_head=False),
    ]
