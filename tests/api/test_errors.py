"""The error shape everywhere, health, metrics and the OpenAPI document."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensorium.config import Settings
from tests.helpers import Api, running_client


async def test_unknown_path_is_json_404(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "Not Found", "field": None}}


async def test_wrong_method_is_json_405(app_client: httpx.AsyncClient) -> None:
    r = await app_client.put("/api/v1/auth/login", json={})
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"json": {"username": "x"}}, "invalid", "password"),
        (
            {"content": b"{oops", "headers": {"Content-Type": "application/json"}},
            "invalid_json",
            None,
        ),
        ({}, "missing_body", None),
    ],
)
async def test_validation_errors_name_the_field(
    app_client: httpx.AsyncClient, kwargs: dict[str, object], code: str, field: str | None
) -> None:
    r = await app_client.post("/api/v1/auth/login", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 422
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] == field
    assert r.json()["error"]["message"]


async def test_query_validation_is_422_with_field(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"order": "sideways"}, "order"),
        ({"cursor": "!!!"}, "cursor"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ]:
        r = await api.client.get(
            f"/api/v1/devices/{device.id}/telemetry", params=params, headers=owner.headers
        )
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["field"] == field


async def test_healthz_checks_the_database(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}


async def test_healthz_is_503_without_a_database(settings: Settings, tmp_path: object) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    )
    async with running_client(broken) as client:
        r = await client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_metrics_count_requests_points_and_rejections(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    before = (await api.client.get("/metrics")).text
    await api.send(device, {"a": 1, "b": 2})
    await api.send(device, {"a": "x"})
    after = (await api.client.get("/metrics")).text
    points = "sensorium_ingest_points_total"
    rejected = "sensorium_ingest_rejected_total"
    assert _metric(after, points, transport="http") - _metric(before, points, transport="http") == 2
    assert (
        _metric(after, rejected, reason="invalid_value")
        - _metric(before, rejected, reason="invalid_value")
        == 1
    )
    route = "/api/v1/devices/{device_id}/telemetry"
    requests = "sensorium_http_requests_total"
    assert (
        _metric(after, requests, route=route, status="202")
        - _metric(before, requests, route=route, status="202")
        == 1
    )


async def test_openapi_documents_every_endpoint_with_examples(
    app_client: httpx.AsyncClient,
) -> None:
    r = await app_client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    ingest = spec["paths"]["/api/v1/devices/{device_id}/telemetry"]["post"]
    examples = ingest["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"flat", "timestamped", "batch"}
    create = spec["components"]["schemas"]["DeviceCreate"]["properties"]["mac"]
    assert create["examples"] == ["A4:CF:12:B3:C4:D5"]
    assert (await app_client.get("/docs")).status_code == 200
