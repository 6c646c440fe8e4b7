"""``GET /``: the page where a person drops an image and sees the top-k classes (plain HTML/JS, no build)."""

from __future__ import annotations

from flask import Blueprint, current_app

bp = Blueprint("web", __name__)

# Everything the page needs comes from this server; the preview is a blob: URL of the chosen file.
CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


@bp.get("/")
def index():
    response = current_app.send_static_file("index.html")
    response.headers["Content-Security-Policy"] = CSP
    return response
