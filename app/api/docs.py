"""The OpenAPI document and an interactive page for it, served without any CDN."""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, current_app, jsonify, render_template, send_from_directory

from app.api.openapi import build_document, operation

bp = Blueprint("docs", __name__, template_folder="templates")
# Swagger UI's JavaScript and CSS as shipped in the flask-openapi3-swagger wheel.
SWAGGER_UI = files("flask_openapi3_swagger") / "templates" / "swagger"


@bp.get("/openapi.json")
@operation(
    "This OpenAPI document",
    tags=("service",),
    responses={200: ("OpenAPI 3.1 document.", "application/json")},
    auth=False,
)
def openapi() -> Response:
    if "openapi.document" not in current_app.extensions:
        current_app.extensions["openapi.document"] = build_document(current_app)
    return jsonify(current_app.extensions["openapi.document"])


@bp.get("/docs")
@operation(
    "Interactive API documentation",
    tags=("service",),
    responses={200: ("An HTML page (Swagger UI).", "text/html")},
    auth=False,
)
def docs() -> str:
    return render_template("docs.html")


@bp.get("/docs/assets/<path:filename>")
def docs_assets(filename: str) -> Response:
    # Static files of the Swagger UI wheel; not an API operation, so not in the document.
    return send_from_directory(str(SWAGGER_UI), filename, max_age=86400)
