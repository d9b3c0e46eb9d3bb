"""The committed docs/openapi.json is the app's document, and /docs works offline."""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contract.settings import Settings
from service.app import create_app

REPO = Path(__file__).resolve().parents[3]


def _export_module() -> Any:
    spec = importlib.util.spec_from_file_location("export_openapi", REPO / "scripts" / "export_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(dev_mode=True, auth={"enabled": False},  # type: ignore[arg-type]
                            storage={"backend": "local", "local_dir": tmp})  # type: ignore[arg-type]
        yield TestClient(create_app(settings))  # no lifespan: nothing here needs Redis


def test_committed_openapi_json_matches_the_app() -> None:
    committed = (REPO / "docs" / "openapi.json").read_text()
    assert committed == _export_module().current(), "run: python scripts/export_openapi.py"


def test_document_says_what_the_api_does(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc == json.loads((REPO / "docs" / "openapi.json").read_text())
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {**doc["components"]["securitySchemes"]["bearerAuth"],
                                                                  "type": "http", "scheme": "bearer"}
    err = doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert set(err["required"]) == {"code", "message", "param"}
    assert "HTTPValidationError" not in json.dumps(doc)
    with_422 = [(m, p) for p, item in doc["paths"].items() for m, op in item.items() if "422" in op["responses"]]
    assert with_422 == [("post", "/v1/videos")]  # the unusable image; bad fields are 400s
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearerAuth": []}], (method, path)
                assert "401" in op["responses"], (method, path)
            for status, resp in op["responses"].items():
                if status.startswith("4") and path.startswith("/v1/"):
                    schema = resp["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    create = doc["paths"]["/v1/videos"]["post"]["responses"]
    assert {"400", "401", "409", "413", "415", "422", "429", "503"} <= set(create)
    content = doc["paths"]["/v1/videos/{video_id}/content"]["get"]
    assert set(content["responses"]["200"]["content"]) == {"video/mp4", "image/jpeg"}
    assert {"206", "302", "409", "416"} <= set(content["responses"])
    variant = next(p for p in content["parameters"] if p["name"] == "variant")
    assert "preview" in json.dumps(variant["schema"])
    events = doc["paths"]["/v1/videos/{video_id}/events"]["get"]
    assert set(events["responses"]["200"]["content"]) == {"text/event-stream"}
    assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in events["parameters"])


def test_docs_page_loads_its_assets_from_the_gateway(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "a CDN reference in /docs"
    assets = re.findall(r"""(?:src|href)="(/docs/assets/[^"]+)""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        resp = client.get(asset)
        assert resp.status_code == 200 and len(resp.content) > 100, asset
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-backed ReDoc is off


def test_playground_page_and_script_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'data-auth="off"' in page.text
    assert client.get("/playground").text == page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    js = client.get("/static/playground.js")
    assert js.status_code == 200 and "/v1/videos" in js.text and "Last-Event-ID" in js.text
