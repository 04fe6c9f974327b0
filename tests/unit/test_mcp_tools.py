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
