"""The device's image download: its own assignment only, ETag = SHA-256, Range to resume
(a connection cut mid-download on a real server resumes to the same SHA-256), streamed."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from sensorium.api.app import create_app
from sensorium.config import Settings
from tests.helpers import Account, Api, RegisteredDevice, serving
from tests.ota.conftest import assignment, image, rollout, status, uploaded

DATA = image(1_500_000, seed=7)
SHA = hashlib.sha256(DATA).hexdigest()


async def _assigned(api: Api) -> tuple[Account, RegisteredDevice, dict[str, Any]]:
    owner = await api.account()
    device = await api.device(owner)
    await status(api, device, "1.0.0")
    fw = await uploaded(api, owner, DATA)
    await rollout(api, owner, firmware_id=fw["id"], devices=[device.id])
    found = await assignment(api, device)
    assert found is not None
    return owner, device, found


async def test_full_download_conditional_and_ranges(api: Api) -> None:
    _owner, device, found = await _assigned(api)
    url = found["url"]
    r = await api.client.get(url, headers=device.headers)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == found["sha256"] == SHA
    assert r.headers["content-length"] == str(len(DATA)) == str(found["size"])
    assert r.headers["etag"] == f'"{SHA}"'
    assert r.headers["accept-ranges"] == "bytes"

    r = await api.client.get(url, headers={**device.headers, "If-None-Match": f'"{SHA}"'})
    assert (r.status_code, r.content) == (304, b"")

    r = await api.client.get(url, headers={**device.headers, "Range": "bytes=1000-1999"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(DATA)}"
    assert r.content == DATA[1000:2000]
    r = await api.client.get(url, headers={**device.headers, "Range": "bytes=-10"})
    assert (r.status_code, r.content) == (206, DATA[-10:])
    r = await api.client.get(url, headers={**device.headers, "Range": "bytes=1499990-"})
    assert (r.status_code, r.content) == (206, DATA[1_499_990:])
    # If-Range with another image's ETag: the whole (current) image, not a mixed one.
    r = await api.client.get(
        url, headers={**device.headers, "Range": "bytes=10-", "If-Range": '"deadbeef"'}
    )
    assert (r.status_code, len(r.content)) == (200, len(DATA))
    r = await api.client.get(
        url, headers={**device.headers, "Range": "bytes=10-", "If-Range": f'"{SHA}"'}
    )
    assert (r.status_code, r.content) == (206, DATA[10:])

    r = await api.client.get(url, headers={**device.headers, "Range": f"bytes={len(DATA)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "range_not_satisfiable",
        "range",
    )
    # What it cannot serve as one range it ignores (RFC 9110): the whole image.
    r = await api.client.get(url, headers={**device.headers, "Range": "bytes=0-1,5-6"})
    assert (r.status_code, len(r.content)) == (200, len(DATA))


async def test_only_the_assigned_device_downloads(api: Api) -> None:
    owner, device, found = await _assigned(api)
    sibling = await api.device(owner)
    stranger = await api.device(await api.account())
    for headers, expected in [
        ({}, 401),
        (owner.headers, 401),
        (sibling.headers, 403),
        (stranger.headers, 403),
    ]:
        r = await api.client.get(found["url"], headers=headers)
        assert r.status_code == expected, r.text
        assert set(r.json()["error"]) == {"code", "message", "field"}
    r = await api.client.get("/api/v1/firmware/jobs/j_nothing/image", headers=device.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ota_job_not_found")
    # Once the device runs the version, the assignment and its download are gone.
    await status(api, device, "1.3.0")
    r = await api.client.get(found["url"], headers=device.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ota_job_not_found")


async def test_a_download_cut_in_the_middle_resumes_with_range(settings: Settings) -> None:
    """Acceptance 2, over a real socket: the device's connection drops after part of the
    image; it asks for the rest with Range and If-Range and ends with the same SHA-256."""
    # One app, started once: by the server (a second lifespan over the same app would
    # leave the first one's background tasks running past the test).
    async with serving(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as http:
        _owner, device, found = await _assigned(Api(http))
        received = bytearray()
        async with http.stream("GET", found["url"], headers=device.headers) as r:
            assert r.status_code == 200
            etag = r.headers["etag"]
            async for chunk in r.aiter_raw():
                received += chunk
                if len(received) >= 400_000:
                    break  # leaving the block closes the connection mid-body
        assert 400_000 <= len(received) < len(DATA)
        headers = {**device.headers, "Range": f"bytes={len(received)}-", "If-Range": etag}
        r = await http.get(found["url"], headers=headers)
        assert r.status_code == 206
        assert r.headers["content-range"] == (f"bytes {len(received)}-{len(DATA) - 1}/{len(DATA)}")
        received += r.content
        assert len(received) == found["size"]
        assert hashlib.sha256(received).hexdigest() == found["sha256"]
