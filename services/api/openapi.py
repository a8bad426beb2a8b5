"""The OpenAPI document, generated from the request and response Structs."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from services.api.schemas import CreateModel, CreateVersion, ModelOut, SourceOut, VersionOut


def _op(summary: str, request: str | None = None, response: str | None = None, status: int = 200) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {str(status): {"description": "OK"}}}
    if request:
        op["requestBody"] = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}}
    if response:
        op["responses"][str(status)]["content"] = {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}
        }
    return op


@functools.cache
def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [CreateModel, CreateVersion, ModelOut, SourceOut, VersionOut], ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Pier management API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/sources": {
                "post": {
                    "summary": "Upload a gzip'd tarball of source code (raw body, application/gzip)",
                    "responses": {"201": {"description": "stored; its digest"}},
                }
            },
            "/v1/models": {
                "get": _op("List model APIs", response="ModelOut"),
                "post": _op("Create a model API and build its version 1", "CreateModel", "ModelOut", 201),
            },
            "/v1/models/{ref}": {"get": _op("Show a model API by id or name", response="ModelOut")},
            "/v1/models/{ref}/versions": {
                "get": _op("List versions, newest first", response="VersionOut"),
                "post": _op("Build and roll out a new version", "CreateVersion", status=201),
            },
        },
    }
