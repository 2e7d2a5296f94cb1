"""The app's OpenAPI schema with the request bodies the generation endpoints take.

The endpoints parse their bodies themselves (for OpenAI's error shape rather than FastAPI's 422), so
FastAPI cannot see them: the request models are added here. The schema is not served; tests and tools
read it from `app.openapi()`.
"""

from __future__ import annotations

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def build_schema(app, bodies: dict[str, type[BaseModel]]) -> dict:
    """FastAPI's schema for `app`, with `bodies` (POST path -> request model) as JSON request bodies."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model in bodies.items():
        body = model.model_json_schema(ref_template=REF)
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
        }
    return schema
