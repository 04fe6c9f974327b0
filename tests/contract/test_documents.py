"""Every GraphQL document the sidecar sends validates against Stigg's schema."""

from functools import cache
from pathlib import Path

import graphql
import pytest

from sidecar.upstream import documents

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "sidecar" / "emulator" / "schema" / "stigg.graphql"
SHARED_SCHEMA = REPO.parent / "shared" / "stigg" / "schema.graphql"
PACKAGE_DOCUMENTS = sorted((REPO / "sidecar").rglob("*.graphql"))


@cache
def stigg_schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA.read_text(encoding="utf-8"))


def test_package_has_documents() -> None:
    sent = {p.name for p in PACKAGE_DOCUMENTS if p.parent.name == "graphql"}
    assert {f"{op.name}.graphql" for op in documents.ALL_OPERATIONS} <= sent


@pytest.mark.parametrize(
    "path",
    [p for p in PACKAGE_DOCUMENTS if p != SCHEMA],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_document_validates_against_stigg_schema(path: Path) -> None:
    errors = graphql.validate(stigg_schema(), graphql.parse(path.read_text(encoding="utf-8")))
    assert [e.message for e in errors] == []


@pytest.mark.parametrize("operation", documents.ALL_OPERATIONS, ids=lambda op: op.name)
def test_operation_selects_its_root_field(operation: documents.Operation) -> None:
    document = graphql.parse(operation.document)
    roots = {
        (sel.alias or sel.name).value
        for definition in document.definitions
        if isinstance(definition, graphql.OperationDefinitionNode)
        for sel in definition.selection_set.selections
        if isinstance(sel, graphql.FieldNode)
    }
    assert roots == {operation.root_field}


def test_a_broken_document_is_caught() -> None:
    bad = graphql.parse("query { entitlementsState(query: {customerId: 1}) { nope } }")
    assert graphql.validate(stigg_schema(), bad)


@pytest.mark.skipif(not SHARED_SCHEMA.exists(), reason="../shared/stigg is not beside the repo")
def test_bundled_schema_is_stiggs() -> None:
    assert SCHEMA.read_bytes() == SHARED_SCHEMA.read_bytes()
