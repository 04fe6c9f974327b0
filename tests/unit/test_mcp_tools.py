"""The MCP tools' schemas agree with the validators the REST API uses."""

from __future__ import annotations

from typing import Any, cast

import pytest

from sidecar.api.mcp_tools import TOOLS, TOOLS_BY_NAME
from sidecar.services import Services
from sidecar.validation import ValidationError

# Validation fails before any service is reached, so none is needed.
NO_SERVICES = cast(Services, None)


async def rejection(tool_name: str, arguments: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as error:
        await TOOLS_BY_NAME[tool_name].run(NO_SERVICES, arguments)
    return error.value


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.name)
async def test_every_schema_property_is_accepted_by_the_validator(tool: Any) -> None:
    properties = tool.input_schema["properties"]
    for name, schema in properties.items():
        # An unusable value: the validator must complain about it, not call it unknown.
        error = await rejection(tool.name, {name: object()})
        assert error.message != "unknown field", (tool.name, name)
        if schema.get("type") == "object" and schema.get("additionalProperties") is False:
            for nested in schema["properties"]:
                error = await rejection(tool.name, {name: {nested: object()}})
                assert error.field != f"{name}.{nested}" or error.message != "unknown field"


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.name)
async def test_required_properties_are_required(tool: Any) -> None:
    first = tool.input_schema["required"][0]
    error = await rejection(tool.name, {})
    assert (error.field, error.message) == (first, "is required")
    unknown = await rejection(tool.name, {"notAField": 1})
    assert (unknown.field, unknown.message) == ("notAField", "unknown field")


def _error_of(result: Any) -> dict[str, Any]:
    assert result.is_error
    return cast(dict[str, Any], result.structured_content["error"])


async def test_deeply_nested_arguments_are_a_tool_error_naming_the_limit() -> None:
    from sidecar.api.json_limits import MAX_JSON_DEPTH
    from sidecar.api.mcp_tools import call_tool

    deep: Any = 1
    for _ in range(1000):
        deep = {"a": deep}
    result = await call_tool(
        NO_SERVICES, "provision-customer", {"customerId": "c", "metadata": deep}
    )
    error = _error_of(result)
    assert error["code"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in error["message"]


async def test_report_usage_value_beyond_float_range_is_a_tool_error_naming_value() -> None:
    from sidecar.api.mcp_tools import call_tool

    arguments = {"customerId": "c", "featureId": "f", "value": 10**309}
    error = _error_of(await call_tool(NO_SERVICES, "report-usage", arguments))
    assert (error["code"], error["field"]) == ("invalid_request", "value")
