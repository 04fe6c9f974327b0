"""The OpenAPI description of the usage routes (merged into ``openapi.py``'s document)."""

from __future__ import annotations

from typing import Any

from sidecar.api.usage import DEAD_LETTER_ID_PATTERN, DeadLetterReplay
from sidecar.usage.model import EventBatch, EventReport, UsageReport, UsageReportBatch

JSON = "application/json"
USAGE_MODELS: tuple[type[Any], ...] = (
    UsageReport,
    UsageReportBatch,
    EventReport,
    EventBatch,
    DeadLetterReplay,
)


_DEAD_LETTER_ID = {"type": "string", "pattern": DEAD_LETTER_ID_PATTERN}
_EMPTY = {"type": "string", "maxLength": 0}  # an empty query parameter reads as absent


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before sending again.",
                "schema": {"type": "integer"},
            }
        }
    return response


_NOT_STORED = _error(
    "Not stored: the spool is full (`spool_full`), its store is unreachable"
    " (`spool_unavailable`) or the sidecar is shutting down (`shutting_down`). Nothing of the"
    " request was kept; send it again after `Retry-After` seconds. With `not_replicated`"
    " (redis.minReplicasAck) the reports are on the Redis primary but not yet on enough"
    " replicas: send them again with the same idempotency keys, they count once.",
    retry_after=True,
)
_BAD = _error("Invalid input; `error.field` names the offending field (e.g. `usages[3].value`).")
_TOO_LARGE = _error("Request body larger than the configured limit.")


def _accepted(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


USAGE_SCHEMAS: dict[str, Any] = {
    "Acceptance": {
        "type": "object",
        "required": ["id", "idempotencyKey", "status"],
        "properties": {
            "id": {"type": "string", "description": "The report's id: its idempotency key."},
            "idempotencyKey": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["accepted", "duplicate"],
                "description": "`duplicate`: the key was already accepted; not counted again.",
            },
            "customerId": {"type": "string"},
            "featureId": {"type": "string"},
            "resourceId": {"type": "string"},
            "eventName": {"type": "string"},
        },
    },
    "BatchAcceptance": {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "usages": {"type": "array", "items": _ref("Acceptance")},
            "events": {"type": "array", "items": _ref("Acceptance")},
        },
    },
    "DeadLetter": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["usage", "event"]},
            "report": {"type": "object", "additionalProperties": True},
            "reason": {"type": "string", "description": "Stigg's error message."},
            "code": {"type": "string", "description": "Stigg's error code."},
            "acceptedAt": {"type": "number", "description": "Unix time."},
            "failedAt": {"type": "number", "description": "Unix time."},
        },
    },
    "DeadLetterList": {
        "type": "object",
        "properties": {
            "deadLetters": {"type": "array", "items": _ref("DeadLetter")},
            "next": _nullable({"type": "string", "description": "Pass as `after` for more."}),
        },
    },
    "DeadLetterReplayResult": {
        "type": "object",
        "properties": {"replayed": {"type": "integer"}},
    },
    "UsageStats": {
        "type": "object",
        "description": "Counters (monotonic) and the spool's current depth.",
        "additionalProperties": True,
        "properties": {
            "spool": {"type": "string", "enum": ["sqlite", "redis"]},
            "accepting": {"type": "boolean"},
            "leader": {"type": "boolean"},
            "authPaused": {"type": "boolean"},
            "spooled": {"type": "object", "additionalProperties": True},
            "usage": {"type": "object", "additionalProperties": True},
            "events": {"type": "object", "additionalProperties": True},
        },
    },
}


def usage_paths() -> dict[str, Any]:
    return {
        "/v1/usage": {
            "post": {
                "operationId": "reportUsage",
                "summary": "Report usage (one or up to 1,000 reports); 202 once durably spooled.",
                "description": "Delivered to Stigg in the background (`reportUsageBulk`, at most"
                " 100 usages a call, rate limited). All or nothing: one invalid report and none"
                " is stored.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": {"oneOf": [_ref("UsageReport"), _ref("UsageReportBatch")]}}
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored: `Acceptance` for one report, `BatchAcceptance`"
                        " for a batch.",
                        "content": {
                            JSON: {
                                "schema": {"anyOf": [_ref("Acceptance"), _ref("BatchAcceptance")]}
                            }
                        },
                    },
                    "400": _BAD,
                    "413": _TOO_LARGE,
                    "503": _NOT_STORED,
                },
            }
        },
        "/v1/events": {
            "post": {
                "operationId": "reportEvents",
                "summary": "Report raw events for Stigg's meters (`reportEvent`).",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": {"oneOf": [_ref("EventReport"), _ref("EventBatch")]}}
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored.",
                        "content": {
                            JSON: {
                                "schema": {"anyOf": [_ref("Acceptance"), _ref("BatchAcceptance")]}
                            }
                        },
                    },
                    "400": _BAD,
                    "413": _TOO_LARGE,
                    "503": _NOT_STORED,
                },
            }
        },
        "/v1/usage/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Reports Stigg rejected as invalid, oldest first.",
                "parameters": [
                    {
                        "name": "kind",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "anyOf": [{"type": "string", "enum": ["usage", "event"]}, _EMPTY]
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Page size (default 100); more than 1,000 is read as 1,000.",
                        "schema": {"anyOf": [{"type": "integer", "minimum": 1}, _EMPTY]},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "The `next` of the previous page.",
                        "schema": {"anyOf": [_DEAD_LETTER_ID, _EMPTY]},
                    },
                ],
                "responses": {
                    "200": _accepted("DeadLetterList", "OK"),
                    "400": _BAD,
                },
            },
            "post": {
                "operationId": "replayDeadLetters",
                "summary": "Send dead letters again (after fixing what Stigg rejected).",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("DeadLetterReplay")}},
                },
                "responses": {
                    "202": _accepted("DeadLetterReplayResult", "Back in the queue."),
                    "400": _BAD,
                    "413": _TOO_LARGE,
                },
            },
        },
        "/v1/usage/stats": {
            "get": {
                "operationId": "usageStats",
                "summary": "The usage pipeline's counters and spool depth.",
                "responses": {"200": _accepted("UsageStats", "OK")},
            }
        },
    }
