"""The OpenAPI spec of `trifecta serve`: every surface it serves, every status it can answer.

FastAPI's generated spec lists a route's success and a 422 in FastAPI's own error shape, and
only the routes of the app itself. The server answers more than that (`core.http`): 400 for
a body it cannot read, 401/403 from the key, 404, 409, 413 for a body above the limit, 422
naming the field, 429 over a quota, 503 when the database or an environment is down, and a
JSON 500 as the last resort; and it serves more: the context service mounted at `/context`
and the MCP face at `/mcp`. `document_app(app)` makes the spec say all of it, so a client
generator, or schemathesis checking conformance, sees what the server really does:

- the paths of every FastAPI app mounted in `app`, prefixed, with their schemas;
- `POST /mcp` (streamable HTTP, JSON responses): the body is a JSON-RPC message, which the
  MCP schema defines, not this one;
- on each operation, each error status it can answer with its body: `ErrorBody` for the
  project's routes, the OpenAI API's error shape (or the project's, for what is refused
  before the route: a body too large or unreadable) for the OpenAI-compatible routes;
- links from a created capsule, task or key to the operations that take its id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.routing import Mount

from trifecta.core.http import ErrorBody

Operation = tuple[str, str]  # (method, path), method in lower case
METHODS = ("get", "put", "post", "delete", "patch")
STATUS_TEXT = {
    400: "The body cannot be read: not JSON, not UTF-8, or nested too deeply.",
    401: "No API key, or one that is not valid (revoked, unknown).",
    403: "The key may not do this: another capsule's, or not the admin key.",
    404: "No such capsule, task, key, model or domain.",
    409: "Conflicts with what exists (a taken id, a request_id being served).",
    406: "The Accept header admits no answer the transport gives (application/json).",
    413: "The body is above the server's limit (1 MB), declared or streamed.",
    415: "The body is not declared as application/json.",
    421: "The Host header is not one this server answers for (DNS-rebinding protection).",
    422: "A field is invalid or out of range; the body names it.",
    429: "Over the capsule's quota or queue; Retry-After says when to come back.",
    500: "An unexpected failure; the server's log has the details.",
    503: "A dependency (the database, an environment) is unreachable; Retry-After.",
}
QUOTA_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/capsules/{capsule_id}/tasks")
# /mcp: what the SDK's transport answers (200 a JSON-RPC answer, 202 an accepted
# notification, JSON-RPC errors for 400 / 404 / 406) and what the route's guard and the app
# answer in `ErrorBody` (401, 413, 415, 421, 500, 503). `tests/reliability/test_mcp_fuzz.py`
# checks every answer against this table.
MCP_ANSWERS = {200: "result", 202: "result"} | dict.fromkeys((400, 404, 406), "either")
MCP_ANSWERS |= dict.fromkeys((401, 413, 415, 421, 500, 503), "error")


# OpenAPI links: where a created resource's id goes next (clients and schemathesis's
# stateful tests follow them). (operation, its success status) -> {name: (target, params)}.
_TASK = "/v1/capsules/{capsule_id}/tasks"
LINKS: dict[tuple[Operation, str], dict[str, tuple[Operation, dict[str, str]]]] = {
    (("post", "/v1/capsules"), "201"): {
        "GetCapsule": (("get", "/v1/capsules/{capsule_id}"), {"capsule_id": "$response.body#/id"}),
        "RemoveCapsule": (
            ("delete", "/v1/capsules/{capsule_id}"),
            {"capsule_id": "$response.body#/id"},
        ),
    },
    (("post", _TASK), "201"): {
        "GetTask": (
            ("get", _TASK + "/{task_id}"),
            {"capsule_id": "$request.path.capsule_id", "task_id": "$response.body#/id"},
        ),
        "TaskFeedback": (
            ("post", _TASK + "/{task_id}/feedback"),
            {"capsule_id": "$request.path.capsule_id", "task_id": "$response.body#/id"},
        ),
    },
    (("post", "/v1/keys"), "201"): {
        "RevokeKey": (("delete", "/v1/keys/{key_id}"), {"key_id": "$response.body#/key/key_id"}),
    },
}


def _add_links(spec: dict[str, Any]) -> None:
    for ((method, path), status), links in LINKS.items():
        response = spec["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        response["links"] = {
            name: {
                "operationId": spec["paths"][target_path][target_method]["operationId"],
                "parameters": params,
            }
            for name, ((target_method, target_path), params) in links.items()
            if target_method in spec["paths"].get(target_path, {})
        }


class JsonRpcErrorDetail(BaseModel):
    code: int = Field(description="-32700 parse error, -32600 invalid request, -32602 ...")
    message: str
    data: Any = None


class JsonRpcErrorBody(BaseModel):
    """A JSON-RPC error, which the MCP transport answers a message it cannot take with."""

    jsonrpc: Literal["2.0"]
    id: int | str | None
    error: JsonRpcErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error, ...")
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """The OpenAI API's error shape, which its compatible routes answer in."""

    error: OpenAIErrorDetail


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


def _authenticated(op: dict[str, Any]) -> bool:
    return any(
        p.get("in") == "header" and p.get("name", "").lower() == "authorization"
        for p in op.get("parameters", [])
    )


def error_statuses(method: str, path: str, op: dict[str, Any], *, openai: bool) -> list[int]:
    """The error statuses an operation of this server can answer."""
    statuses = {500, 503}  # any route: an unexpected failure, the database unreachable
    params = [p for p in op.get("parameters", []) if p.get("in") != "header"]
    if _authenticated(op):
        statuses |= {401, 403, 404}  # a key's capsule may be gone
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)
    if params or "requestBody" in op:
        statuses.add(422)
    if "requestBody" in op:
        statuses |= {400, 413}
    if method in ("post", "put", "patch", "delete") and _authenticated(op) and not openai:
        statuses.add(409)
    if path in QUOTA_PATHS or path == "/mcp":
        statuses.add(429)
    return sorted(statuses)


def _error_response(status: int, openai: bool) -> dict[str, Any]:
    own = {"$ref": "#/components/schemas/ErrorBody"}
    theirs = {"$ref": "#/components/schemas/OpenAIErrorBody"}
    schema = {"anyOf": [theirs, own]} if openai else own
    return {"description": STATUS_TEXT[status], "content": {"application/json": {"schema": schema}}}


def _mcp_operation() -> dict[str, Any]:
    any_json: dict[str, Any] = {"type": "object"}
    return {
        "tags": ["mcp"],
        "summary": "MCP face (streamable HTTP)",
        "description": "A JSON-RPC message of the Model Context Protocol; tools `run_task`, "
        "`search_context`, `show_playbook`, `show_plan`, `fleet_status`, `resolve_capsule`. "
        "Send `Accept: application/json, text/event-stream`.",
        "operationId": "mcp_post",
        "parameters": [
            {"name": "authorization", "in": "header", "schema": {"type": "string"}},
            {"name": "mcp-session-id", "in": "header", "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": any_json}}},
        "responses": {
            str(status): _mcp_response(status, kind) for status, kind in MCP_ANSWERS.items()
        },
    }


def _mcp_response(status: int, kind: str) -> dict[str, Any]:
    own = {"$ref": "#/components/schemas/ErrorBody"}
    rpc = {"$ref": "#/components/schemas/JsonRpcErrorBody"}
    schema = {"result": {"type": "object"}, "error": own, "either": {"anyOf": [rpc, own]}}[kind]
    if status == 202:  # a notification or response accepted: no body
        return {"description": "Accepted (a JSON-RPC notification or response)."}
    return {
        "description": STATUS_TEXT.get(status, "A JSON-RPC answer."),
        "content": {"application/json": {"schema": schema}},
    }


def _mounted(app: FastAPI) -> Iterable[tuple[str, FastAPI]]:
    for route in app.routes:
        if isinstance(route, Mount) and isinstance(route.app, FastAPI):
            yield route.path, route.app


def build_spec(app: FastAPI, *, openai: set[Operation], mcp: bool) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for prefix, sub in _mounted(app):
        inner = get_openapi(title=sub.title, version=sub.version, routes=sub.routes)
        for path, ops in inner.get("paths", {}).items():
            spec["paths"][prefix + path] = ops
        for name, schema in inner.get("components", {}).get("schemas", {}).items():
            components.setdefault(name, schema)
    if mcp:
        spec["paths"]["/mcp"] = {"post": _mcp_operation()}
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components.update(_schemas(ErrorBody, OpenAIErrorBody, JsonRpcErrorBody))
    _add_links(spec)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in METHODS or path == "/mcp":
                continue
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's, in its own shape: ours is added below
            theirs = (method, path) in openai
            for status in error_statuses(method, path, op, openai=theirs):
                responses[str(status)] = _error_response(status, theirs)
    return spec


def operations_of(router: APIRouter) -> set[Operation]:
    """The (method, path) operations of a router's own routes (before it is included)."""
    return {
        (method.lower(), route.path)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


def document_app(app: FastAPI, *, openai: Iterable[Operation] = (), mcp: bool = False) -> None:
    """Replace `app.openapi` with the full spec (built once, on first use)."""
    openai_ops = set(openai)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_spec(app, openai=openai_ops, mcp=mcp)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
