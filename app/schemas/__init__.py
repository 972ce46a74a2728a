"""Request and response shapes: pydantic models, validated in views and published as OpenAPI."""
