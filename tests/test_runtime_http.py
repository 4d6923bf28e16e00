"""The runtime over real HTTP: `lsfn serve` (functions-framework, gunicorn) serving the test-only
bright-region model, driven with bodies captured from Label Studio 1.23, fetching task images
from a local server that stands in for Label Studio."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.servers import Answer, RecordingServer, free_port
from tests.serving import HTTP, Function, call, wait_listening

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data" / "ls-1.23"
BRIGHT = ROOT / "tests" / "functions" / "bright" / "main.py"
LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "lsuser", "lspass"
SECRET = "s3cret-webhook"


def captured(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())["body"]


def png(width: int, height: int, squares: list[tuple[int, int, int, int]]) -> bytes:
    """A dark PNG with bright squares (x0, y0, x1, y1), end exclusive."""
    image = Image.new("RGB", (width, height), (20, 20, 20))
    for x0, y0, x1, y1 in squares:
        image.paste((250, 250, 250), (x0, y0, x1, y1))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bright(tmp: Path, env: dict[str, str], params: dict[str, Any] | str | None = None) -> Function:
    """The bright-region model served with its parameters file (bright.json) written first."""
    root = tmp / "models"
    root.mkdir(parents=True)
    if params is not None:
        (root / "bright.json").write_text(params if isinstance(params, str) else json.dumps(params))
    return Function(BRIGHT, tmp, env, root)


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# Images the stand-in Label Studio serves, and where their bright regions are.
IMG1 = png(64, 48, [(10, 12, 30, 30), (40, 32, 56, 42)])  # the captured tasks are 64x48
IMG0 = png(80, 60, [(5, 5, 25, 35)])
IMG2 = png(100, 50, [(0, 0, 100, 50)])


@pytest.fixture(scope="module")
def label_studio() -> Iterator[RecordingServer]:
    """Stands in for Label Studio's /data/upload: legacy Token auth, 401 without it."""
    server = RecordingServer()

    def upload(data: bytes) -> Any:
        def answer(hit: Any) -> Answer:
            if hit.headers.get("authorization") != f"Token {LEGACY_KEY}":
                return Answer(401, b'{"detail": "Authentication credentials were not provided."}')
            return Answer(200, data, {"Content-Type": "image/png"})

        return answer

    server.routes.update(
        {
            "/data/upload/2/11524fb9-img1.jpg": upload(IMG1),
            "/data/upload/2/0e768658-img0.png": upload(IMG0),
            "/data/upload/2/4c9e6096-img2.png": upload(IMG2),
            "/data/upload/2/bomb.png": upload(png_bomb(12000, 12000)),
            "/data/upload/2/corrupt.png": upload(b"\x89PNG\r\n\x1a\nnot really"),
        }
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def forbidden() -> Iterator[RecordingServer]:
    """A target on a loopback address that is not allowed: it must never be contacted."""
    server = RecordingServer("127.0.0.2")
    server.routes["/img.png"] = Answer(200, IMG0)
    yield server
    server.close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[list[RecordingServer]]:
    """Listeners on Label Studio's own address (other ports) and on ::1: never to be contacted."""
    servers = [RecordingServer("127.0.0.1")]
    try:
        servers.append(RecordingServer("::1"))
    except OSError:  # no IPv6 loopback here
        pass
    for server in servers:
        server.routes["/img.png"] = Answer(200, IMG0)
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def files_host() -> Iterator[RecordingServer]:
    """An allowed non-Label-Studio file host that needs the project's task-data login."""
    server = RecordingServer("127.0.0.3")

    def protected(hit: Any) -> Answer:
        if hit.headers.get("authorization") != basic("alice", "wonder")["Authorization"]:
            return Answer(401, b"login required")
        return Answer(200, IMG0)

    server.routes["/protected.png"] = protected
    yield server
    server.close()


@pytest.fixture(scope="module")
def function(
    tmp_path_factory: pytest.TempPathFactory, label_studio: RecordingServer, forbidden: RecordingServer, files_host: RecordingServer
) -> Iterator[Function]:
    """The main function: basic auth and a webhook secret configured, small body limit."""
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": LEGACY_KEY,
        "BASIC_AUTH_USER": USER,
        "BASIC_AUTH_PASS": PASSWORD,
        "WEBHOOK_SECRET": SECRET,
        "MAX_BODY_BYTES": str(1 << 20),
        "MAX_CONCURRENT_PREDICTIONS": "2",
        "ADMIT_QUEUE": "1",
        "FETCH_ALLOWED_HOSTS": "127.0.0.3",
        "FETCH_TIMEOUT": "5",
    }
    fn = bright(tmp_path_factory.mktemp("main"), env, {"threshold": 0.8})
    fn.wait_ready()
    yield fn
    fn.close()


def predict_body(tasks: list[dict[str, Any]], context: dict[str, Any] | None = None) -> dict[str, Any]:
    body = captured("req-0013-POST-predict.json")
    body["tasks"] = [{"id": 100 + i, "data": data} for i, data in enumerate(tasks)] if tasks else body["tasks"]
    body["params"]["context"] = context
    return body


def box(result: dict[str, Any]) -> tuple[float, float, float, float]:
    value = result["value"]
    return tuple(round(value[k], 4) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


# -- health, readiness, setup, versions ------------------------------------------------------------


def test_health_is_public_and_up(function: Function) -> None:
    for path in ("/", "/health"):
        response = call("GET", function.url + path)
        assert response.status == 200
        assert response.json() == {"status": "UP", "model_class": "BrightModel", "model_version": "bright-1"}
        assert response.headers["Content-Type"] == "application/json"


def test_listens_before_the_model_loads_and_predict_waits_for_it(
    tmp_path: Path, label_studio: RecordingServer
) -> None:
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_KEY}
    fn = bright(tmp_path, env, {"threshold": 0.8, "load_seconds": 3, "fit_seconds": 1.5})
    try:
        loading = call("GET", fn.url + "/health")
        assert loading.status == 503
        assert loading.json()["status"] == "LOADING"
        assert loading.headers["Retry-After"]
        # /setup and /versions answer while the model loads (no auth configured here).
        setup = call("POST", fn.url + "/setup", captured("req-0002-POST-setup.json"))
        assert setup.status == 200 and setup.json() == {"model_version": "bright-1"}
        # A /predict arriving during the cold start waits for the model instead of failing.
        response = call("POST", fn.url + "/predict", predict_body([{"image": "/data/upload/2/0e768658-img0.png"}]))
        assert response.status == 200, response.data
        assert call("GET", fn.url + "/health").status == 200
        ready = [r for r in fn.logs() if r.get("message") == "model ready"]
        assert ready and ready[0]["load_seconds"] >= 3
        # Without auth configured, webhooks need no credentials; a slow fit() runs after the
        # answer (Label Studio waits one second, inside the annotator's save).
        webhook = call("POST", fn.url + "/webhook", captured("req-0010-POST-webhook.json"))
        assert webhook.status == 200 and webhook.json()["status"] == "queued"
        assert not (fn.model_root / "fitted.jsonl").exists()
        assert fitted(fn, 1)[0]["action"] == "TASKS_CREATED"
    finally:
        fn.close()


def test_predict_gives_up_waiting_for_a_slow_load(tmp_path: Path) -> None:
    fn = bright(tmp_path, {"READY_TIMEOUT": "0.2"}, {"load_seconds": 5})
    try:
        response = call("POST", fn.url + "/predict", predict_body([{"image": "data:,x"}]))
        assert response.status == 503
        assert response.json()["error"] == "model is loading"
        assert response.headers["Retry-After"]
        assert call("HEAD", fn.url + "/health").status == 503
    finally:
        fn.close()


def test_failed_load_is_reported_not_hidden(tmp_path: Path) -> None:
    auth = {"BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD}
    fn = bright(tmp_path, auth, params="{not json")  # setup() fails on it
    try:
        deadline = time.monotonic() + 30
        while (health := call("GET", fn.url + "/health", headers=basic())).json()["status"] == "LOADING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status == 503
        assert health.json()["status"] == "FAILED"
        assert "JSONDecodeError" in health.json()["detail"]
        # The reason may name files in the image: callers without credentials do not see it.
        anonymous = call("GET", fn.url + "/health")
        assert anonymous.status == 503 and anonymous.json()["status"] == "FAILED"
        assert "JSONDecodeError" not in anonymous.data.decode()
        response = call("POST", fn.url + "/predict", predict_body([{"image": "data:,x"}]), basic())
        assert response.status == 503
        assert response.json()["error"] == "model failed to load"
        assert any(r.get("message") == "model failed to load" and "exception" in r for r in fn.logs())
    finally:
        fn.close()


def test_setup_answers_the_model_version(function: Function) -> None:
    for name in ("req-0002-POST-setup.json", "req-0085-POST-setup.json"):
        response = call("POST", function.url + "/setup", captured(name), basic())
        assert response.status == 200
        assert response.json() == {"model_version": "bright-1"}


def test_setup_refuses_a_label_config_the_model_cannot_serve(function: Function) -> None:
    body = captured("req-0002-POST-setup.json")
    body["schema"] = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    response = call("POST", function.url + "/setup", body, basic())
    assert response.status == 422
    assert response.json()["error"] == "unsupported label config"
    assert "RectangleLabels" in response.json()["detail"]
    body["schema"] = "<View><Image name="
    response = call("POST", function.url + "/setup", body, basic())
    assert response.status == 422


def test_versions(function: Function) -> None:
    response = call("GET", function.url + "/versions", headers=basic())
    assert response.status == 200
    assert response.json()["versions"] == ["bright-1"]


# -- /predict ----------------------------------------------------------------------------------------


def test_batch_predict_of_captured_request(function: Function, label_studio: RecordingServer) -> None:
    response = call("POST", function.url + "/predict", captured("req-0013-POST-predict.json"), basic())
    assert response.status == 200, response.data
    results = response.json()["results"]
    assert len(results) == 3
    boxes = [box(item["result"][0]) for item in results]
    # img1: both squares (10..56 x 12..42 of 64x48); img0: 5..25 x 5..35 of 80x60; img2: all.
    assert boxes == [(15.625, 25.0, 71.875, 62.5), (6.25, 8.3333, 25.0, 50.0), (0.0, 0.0, 100.0, 100.0)]
    first = results[0]
    assert first["model_version"] == "bright-1" and first["score"] == 1.0
    region = first["result"][0]
    assert (region["from_name"], region["to_name"], region["type"]) == ("label", "image", "rectanglelabels")
    assert region["value"]["rectanglelabels"] == ["Cat"]
    assert (region["original_width"], region["original_height"]) == (64, 48)
    assert any(h.headers.get("authorization") == f"Token {LEGACY_KEY}" for h in label_studio.hits)
    timing = response.headers["Server-Timing"]
    for phase in ("fetch", "decode", "predict", "encode", "total"):
        assert f"{phase};dur=" in timing


def test_interactive_keypoint_click_from_params_context(function: Function) -> None:
    response = call("POST", function.url + "/predict", captured("req-0067-POST-predict.json"), basic())
    assert response.status == 200, response.data
    (item,) = response.json()["results"]
    (region,) = item["result"]
    # The click at 25 %, 37.5 % of 64x48 is pixel (16, 18): inside the first square only.
    assert box(region) == (15.625, 25.0, 31.25, 37.5)
    assert region["value"]["rectanglelabels"] == ["Cat"]


def test_batch_with_broken_tasks_answers_the_others(function: Function, forbidden: RecordingServer) -> None:
    tasks = [
        {"image": "/data/upload/2/0e768658-img0.png"},
        {"image": "/data/upload/2/0e768658-img0.png", "explode": True},
        {"picture": "/data/upload/2/0e768658-img0.png"},
        {"image": "/data/upload/2/missing.png"},
        {"image": "/data/upload/2/corrupt.png"},
        {"image": "/data/upload/2/bomb.png"},
        {"image": f"{forbidden.url}/img.png"},
        {"image": "/data/upload/2/4c9e6096-img2.png"},
        {"image": "/data/upload/2/0e768658-img0.png", "nan": True},  # not encodable as JSON
    ]
    response = call("POST", function.url + "/predict", predict_body(tasks), basic())
    assert response.status == 200, response.data
    results = response.json()["results"]
    assert len(results) == len(tasks)
    ok = [0, 7]
    for i, item in enumerate(results):
        if i in ok:
            assert item["result"] and "error" not in item
        else:
            assert "result" not in item, (i, item)
            assert item["error"]
    assert "internal error" in results[1]["error"]
    assert "'image'" in results[2]["error"]
    assert "404" in results[3]["error"]
    assert "image" in results[4]["error"].lower()
    assert "12000x12000" in results[5]["error"]
    assert "forbidden" in results[6]["error"]
    assert "internal error" in results[8]["error"]
    assert forbidden.hits == []
    # The exploding task is logged with its id and the traceback, and the body has no traceback.
    assert any(r.get("task_id") == 101 and "RuntimeError" in r.get("exception", "") for r in function.logs())
    assert "Traceback" not in response.data.decode()


def test_a_large_batch_is_answered_in_task_order(function: Function) -> None:
    """More tasks than are predicted together: worked through in chunks, answered in order."""
    images = ["/data/upload/2/11524fb9-img1.jpg", "/data/upload/2/0e768658-img0.png", "/data/upload/2/4c9e6096-img2.png"]
    tasks: list[dict[str, Any]] = [{"image": images[i % 3]} for i in range(21)]
    tasks[10] = {"image": "/data/upload/2/missing.png"}
    response = call("POST", function.url + "/predict", predict_body(tasks), basic())
    results = response.json()["results"]
    assert len(results) == 21 and "error" in results[10]
    expected = {0: 64, 1: 80, 2: 100}
    for i, item in enumerate(results):
        if i != 10:
            assert item["result"][0]["original_width"] == expected[i % 3], i


def test_tasks_not_started_before_the_deadline_are_error_items(function: Function) -> None:
    """Label Studio stores nothing when /predict outlasts its 100 s: by PREDICT_DEADLINE (or the
    shorter time a front door passes in X-Predict-Deadline) the tasks still waiting are error
    items, and the finished ones are answered."""
    tasks: list[dict[str, Any]] = [{"image": "/data/upload/2/0e768658-img0.png", "hold": 0.4} for _ in range(10)]
    response = call("POST", function.url + "/predict", predict_body(tasks), {**basic(), "X-Predict-Deadline": "3"})
    results = response.json()["results"]
    assert response.status == 200 and len(results) == 10
    # The first chunk (8 tasks, 3.2 s) started in time and is finished; the next would not
    # have finished in time (it would take as long), so it never started.
    assert all(item["result"] for item in results[:8])
    assert all("result" not in item and "not predicted before the deadline" in item["error"] for item in results[8:])
    # No time left: nothing is predicted; a malformed or longer header changes nothing.
    late = call("POST", function.url + "/predict", predict_body(tasks[:2]), {**basic(), "X-Predict-Deadline": "0"})
    assert ["deadline" in item["error"] for item in late.json()["results"]] == [True, True]
    for header in ("soon", "1e9", "-1"):
        answer = call("POST", function.url + "/predict", predict_body(tasks[:1]), {**basic(), "X-Predict-Deadline": header})
        assert answer.json()["results"][0]["result"], header


def test_interactive_failure_is_an_http_error(function: Function) -> None:
    body = captured("req-0067-POST-predict.json")
    body["tasks"][0]["data"] = {"image": "/data/upload/2/bomb.png"}
    response = call("POST", function.url + "/predict", body, basic())
    assert response.status == 413
    assert response.json()["error"] == "image too large"
    body["tasks"][0]["data"] = {"image": "/data/upload/2/missing.png"}
    assert call("POST", function.url + "/predict", body, basic()).status == 502
    body["tasks"][0]["data"] = {"image": "/data/upload/2/11524fb9-img1.jpg", "nan": True}
    assert call("POST", function.url + "/predict", body, basic()).status == 500
    body["tasks"][0]["data"] = {"image": "/data/upload/2/11524fb9-img1.jpg", "explode": True}
    response = call("POST", function.url + "/predict", body, basic())
    assert response.status == 500
    error = response.json()
    assert error["error"] == "internal error" and error["request_id"] == response.headers["X-Request-Id"]
    assert "Traceback" not in response.data.decode() and "explode" not in response.data.decode()
    assert any(r.get("request_id") == error["request_id"] and "exception" in r for r in function.logs())


def test_project_login_is_basic_auth_for_its_file_host(function: Function, files_host: RecordingServer) -> None:
    body = predict_body([{"image": f"{files_host.url}/protected.png"}])
    body["params"].update({"login": "alice", "password": "wonder"})
    response = call("POST", function.url + "/predict", body, basic())
    assert response.status == 200
    assert response.json()["results"][0]["result"]
    assert files_host.hits[-1].headers["authorization"] == basic("alice", "wonder")["Authorization"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:{port}/img.png",  # loopback, not allowed
        "http://127.0.0.1:{lo}/img.png",  # Label Studio's address, another port: another service
        "http://localhost:{lo}/img.png",  # a name resolving to loopback
        "http://0.0.0.0:{lo}/img.png",  # the unspecified address reaches local listeners
        "http://[::1]:{lo6}/img.png",
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
        "http://10.0.0.1/img.png",
        "http://192.168.1.1/img.png",
        "http://172.16.0.1/img.png",
        "http://[fd00::1]/img.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/",
    ],
)
def test_ssrf_targets_are_refused_and_never_contacted(
    function: Function, forbidden: RecordingServer, loopback: list[RecordingServer], url: str
) -> None:
    listeners = [forbidden, *loopback]
    before = [len(server.hits) for server in listeners]
    body = captured("req-0067-POST-predict.json")
    lo6 = loopback[1].port if len(loopback) > 1 else 1
    body["tasks"][0]["data"] = {"image": url.format(port=forbidden.port, lo=loopback[0].port, lo6=lo6)}
    response = call("POST", function.url + "/predict", body, basic())
    assert response.status == 422, response.data
    assert response.json()["error"] == "forbidden URL"
    assert [len(server.hits) for server in listeners] == before


def test_ssrf_redirect_from_an_allowed_host_is_refused(
    function: Function, label_studio: RecordingServer, forbidden: RecordingServer
) -> None:
    label_studio.routes["/data/upload/2/to-metadata.png"] = Answer(
        302, headers={"Location": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}
    )
    label_studio.routes["/data/upload/2/to-loopback.png"] = Answer(302, headers={"Location": f"{forbidden.url}/img.png"})
    for path in ("/data/upload/2/to-metadata.png", "/data/upload/2/to-loopback.png"):
        body = captured("req-0067-POST-predict.json")
        body["tasks"][0]["data"] = {"image": path}
        response = call("POST", function.url + "/predict", body, basic())
        assert response.status == 422, response.data
        assert response.json()["error"] == "forbidden URL"
    assert "/data/upload/2/to-loopback.png" in label_studio.paths()
    assert forbidden.hits == []


def test_image_cache_spares_the_second_download(function: Function, label_studio: RecordingServer) -> None:
    label_studio.routes["/data/upload/2/cached.png"] = label_studio.routes["/data/upload/2/0e768658-img0.png"]
    body = captured("req-0067-POST-predict.json")
    body["tasks"][0]["data"] = {"image": "/data/upload/2/cached.png"}
    for _ in range(3):
        assert call("POST", function.url + "/predict", body, basic()).status == 200
    assert label_studio.paths().count("/data/upload/2/cached.png") == 1
    metrics = call("GET", function.url + "/metrics", headers=basic()).data.decode()
    hits = [line for line in metrics.splitlines() if line.startswith('lsfn_cache_lookups_total{cache="image",result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 2


def test_requests_wait_for_a_slot_a_flood_is_refused_and_control_routes_stay_fast(function: Function) -> None:
    batch = predict_body([{"image": "/data/upload/2/0e768658-img0.png", "hold": 3}])
    interactive = captured("req-0067-POST-predict.json")
    interactive["tasks"][0]["data"] = {"image": "/data/upload/2/11524fb9-img1.jpg", "hold": 3}
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(call, "POST", function.url + "/predict", batch, basic())]
        wait_in_flight(function, 1)
        # MAX_CONCURRENT_PREDICTIONS=2, one slot kept for interactive requests: a second batch
        # waits (ADMIT_QUEUE=1), a third finds the queue full and is refused at once.
        running.append(pool.submit(call, "POST", function.url + "/predict", batch, basic()))
        wait_waiting(function, running[-1], 1)
        third_batch = call("POST", function.url + "/predict", batch, basic())
        assert third_batch.status == 503 and "already waiting" in third_batch.json()["detail"]
        assert not running[0].done()  # refused at once, not after waiting for a slot
        running.append(pool.submit(call, "POST", function.url + "/predict", interactive, basic()))
        wait_in_flight(function, 2)
        running.append(pool.submit(call, "POST", function.url + "/predict", interactive, basic()))
        wait_waiting(function, running[-1], 2)
        overloaded = call("POST", function.url + "/predict", interactive, basic())
        assert overloaded.status == 503
        assert overloaded.headers["Retry-After"] == "1"
        assert overloaded.json()["error"] == "overloaded"
        # Control routes answer while both predictions are still running.
        for method, path, body in [
            ("GET", "/health", None),
            ("POST", "/setup", captured("req-0002-POST-setup.json")),
            ("GET", "/versions", None),
            ("GET", "/metrics", None),
        ]:
            started = time.monotonic()
            assert call(method, function.url + path, body, basic()).status == 200
            assert time.monotonic() - started < 0.5, path
        assert not any(f.done() for f in running)
        # The waiting ones were served once a slot came free (ADMIT_TIMEOUT=5).
        assert [f.result().status for f in running] == [200, 200, 200, 200]


def wait_waiting(fn: Function, request: Any, count: int) -> None:
    """Until ``count`` requests wait for a slot (the gates' waiting counts in /metrics)."""

    def waiting() -> float:
        text = call("GET", fn.url + "/metrics", headers=basic()).data.decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("lsfn_admission_waiting{"))

    deadline = time.monotonic() + 10
    while waiting() < count:
        assert time.monotonic() < deadline and not request.done()
        time.sleep(0.02)


def wait_in_flight(fn: Function, count: int) -> None:
    deadline = time.monotonic() + 10
    while f"lsfn_predictions_in_flight {count}.0" not in call("GET", fn.url + "/metrics", headers=basic()).data.decode():
        assert time.monotonic() < deadline
        time.sleep(0.02)


# -- /webhook ------------------------------------------------------------------------------------------


def fitted(fn: Function, count: int) -> list[dict[str, Any]]:
    path = fn.model_root / "fitted.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise TimeoutError(f"fit saw fewer than {count} events")


def test_webhooks(function: Function) -> None:
    annotation = captured("req-0077-POST-webhook.json")
    # Label Studio's project webhooks carry no Authorization: refused when auth is configured.
    refused = call("POST", function.url + "/webhook", annotation)
    assert refused.status == 401
    wrong = call("POST", function.url + "/webhook", annotation, {"X-Webhook-Secret": "nope"})
    assert wrong.status == 401
    queued = call("POST", function.url + "/webhook", annotation, {"X-Webhook-Secret": SECRET})
    assert queued.status == 200 and queued.json()["status"] == "queued"
    # START_TRAINING comes with the connection's basic auth and gets a job id.
    training = call("POST", function.url + "/webhook", captured("req-0079-POST-webhook.json"), basic())
    assert training.status == 200 and len(training.json()["job"]) == 32
    deleted = call("POST", function.url + "/webhook", captured("req-0081-POST-webhook.json"), {"X-Webhook-Secret": SECRET})
    assert deleted.status == 200
    events = fitted(function, 3)
    assert [e["action"] for e in events[-3:]] == ["ANNOTATION_CREATED", "START_TRAINING", "ANNOTATIONS_DELETED"]
    assert events[-1]["project"] == 2
    bad = call("POST", function.url + "/webhook", {"project": {}}, basic())
    assert bad.status == 422 and "action" in bad.json()["detail"]


# -- auth and errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/setup", "req-0002-POST-setup.json"),
        ("POST", "/predict", "req-0067-POST-predict.json"),
        ("GET", "/versions", None),
        ("GET", "/metrics", None),
        ("GET", "/nowhere", None),
    ],
)
def test_basic_auth(function: Function, method: str, path: str, body: str | None) -> None:
    payload = captured(body) if body else None
    wrong = ({}, basic(password="wrong"), basic(user="other"), {"Authorization": f"Token {LEGACY_KEY}"})
    for headers in (*wrong, {"X-Webhook-Secret": SECRET}):  # the webhook's secret opens only /webhook
        response = call(method, function.url + path, payload, headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert response.json()["error"] == "unauthorized"
    expected = 404 if path == "/nowhere" else 200
    assert call(method, function.url + path, payload, basic()).status == expected


def test_error_statuses(function: Function) -> None:
    url = function.url
    auth = basic()
    json_headers = {**auth, "Content-Type": "application/json"}
    cases = [
        (call("POST", url + "/predict", raw=b'{"tasks": [', headers=json_headers), 400, "malformed JSON"),
        (call("POST", url + "/predict", raw=b"[" * 100_000, headers=json_headers), 400, "malformed JSON"),
        (call("GET", url + "/nowhere", headers=auth), 404, "not found"),
        (call("GET", url + "/predict", headers=auth), 405, "method not allowed"),
        (call("DELETE", url + "/health", headers=auth), 405, "method not allowed"),
        (call("POST", url + "/predict", raw=b"tasks", headers={**auth, "Content-Type": "text/plain"}), 415, "unsupported media type"),
        (call("POST", url + "/predict", raw=b"{}", headers=auth), 415, "unsupported media type"),
        (call("POST", url + "/predict", {"tasks": []}, auth), 422, "invalid request"),
        (call("POST", url + "/predict", {"tasks": [{"id": 1}]}, auth), 422, "invalid request"),
        (call("POST", url + "/predict", [1, 2], auth), 422, "invalid request"),
        (call("POST", url + "/predict", {"tasks": [{"data": {}}]}, auth), 422, "invalid request"),
        (call("POST", url + "/setup", {"project": ["x"]}, auth), 422, "invalid request"),
    ]
    unsupported = predict_body([{"image": "/data/upload/2/0e768658-img0.png"}])
    unsupported["label_config"] = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    cases.append((call("POST", url + "/predict", unsupported, auth), 422, "unsupported label config"))
    for response, status, error in cases:
        assert response.status == status, (status, response.data)
        body = response.json()
        assert body["error"] == error and body["detail"]
        assert body["request_id"] == response.headers["X-Request-Id"]
    assert cases[3][0].headers["Allow"] == "POST"
    assert "label_config" in cases[10][0].json()["detail"]
    assert "tasks" in cases[7][0].json()["detail"]


def test_oversized_body_is_refused(function: Function) -> None:
    body = predict_body([{"image": "data:image/png;base64," + base64.b64encode(os.urandom(800_000)).decode()}])
    response = call("POST", function.url + "/predict", body, basic())
    assert response.status == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]

    # Chunked, without a Content-Length: the limit applies while reading.
    def chunks() -> Iterator[bytes]:
        yield b'{"tasks": ["'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"]}'

    response = HTTP.request(
        "POST", function.url + "/predict", body=chunks(), headers={**basic(), "Content-Type": "application/json"}, chunked=True
    )
    assert response.status == 413
    # The process is still serving.
    assert call("GET", function.url + "/health").status == 200


def test_request_id_is_echoed_and_logged(function: Function) -> None:
    response = call("GET", function.url + "/versions", headers={**basic(), "X-Request-Id": "trace-abc.123"})
    assert response.headers["X-Request-Id"] == "trace-abc.123"
    deadline = time.monotonic() + 5
    while not any(r.get("request_id") == "trace-abc.123" and r.get("status") == 200 for r in function.logs()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bad = call("GET", function.url + "/versions", headers={**basic(), "X-Request-Id": "x" * 500})
    assert len(bad.headers["X-Request-Id"]) == 16


def test_metrics_exposition(function: Function) -> None:
    call("POST", function.url + "/predict", captured("req-0067-POST-predict.json"), basic())
    call("GET", function.url + "/nowhere", headers=basic())
    assert HTTP.request("FROB", function.url + "/health").status == 405
    response = call("GET", function.url + "/metrics", headers=basic())
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.data.decode()
    assert 'lsfn_requests_total{method="POST",route="predict",status="200"}' in text
    assert 'lsfn_requests_total{method="GET",route="unknown",status="404"}' in text
    assert 'lsfn_request_duration_seconds_bucket{le="0.005",route="health"}' in text
    assert 'lsfn_errors_total{error="404",route="unknown"}' in text
    assert 'lsfn_predict_phase_seconds_count{phase="fetch"}' in text
    assert "lsfn_model_ready 1.0" in text
    # Methods are a fixed label set: a client cannot grow the metrics with made-up ones.
    assert 'method="other",route="health",status="405"' in text and "FROB" not in text


# -- the WSGI app without functions-framework, and the CLI ----------------------------------------------------


def test_create_app_is_a_plain_wsgi_app(tmp_path: Path, label_studio: RecordingServer) -> None:
    """gunicorn and Modal serve `create_app`'s Flask app directly: same routes, same answers."""
    from werkzeug.serving import make_server

    from lsfn.shared.runtime import create_app
    from lsfn.shared.settings import Settings
    from tests.functions.bright.main import BrightModel

    (tmp_path / "bright.json").write_text("{}")
    settings = Settings.model_validate(
        {"MODEL_ROOT": str(tmp_path), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_KEY}
    )
    app = create_app(BrightModel, settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        app.extensions["lsfn"].start()
        assert app.extensions["lsfn"].loader.wait(30).value == "ready"
        assert call("GET", url + "/health").json()["status"] == "UP"
        response = call("POST", url + "/predict", captured("req-0013-POST-predict.json"))
        assert response.status == 200 and len(response.json()["results"]) == 3
        assert call("GET", url + "/nope").status == 404
        assert call("OPTIONS", url + "/predict").status == 405
    finally:
        server.shutdown()


def test_functions_framework_target_serves_every_route(tmp_path: Path, label_studio: RecordingServer) -> None:
    """`functions-framework --target handler`, as a Cloud Run source deploy runs it."""
    port = free_port()
    env = {
        **os.environ,
        "MODEL_ROOT": str(tmp_path),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": LEGACY_KEY,
        "BASIC_AUTH_USER": USER,
        "BASIC_AUTH_PASS": PASSWORD,
    }
    command = [str(Path(sys.executable).parent / "functions-framework"), "--source", str(BRIGHT), "--target", "handler"]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port, proc)
        deadline = time.monotonic() + 30
        while call("GET", url + "/health").status != 200:  # the first request starts the load
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = call("POST", url + "/predict", captured("req-0013-POST-predict.json"), basic())
        assert response.status == 200 and len(response.json()["results"]) == 3
        assert call("POST", url + "/setup", captured("req-0002-POST-setup.json"), basic()).json() == {"model_version": "bright-1"}
        assert call("GET", url + "/versions", headers=basic()).status == 200
        assert call("GET", url + "/metrics", headers=basic()).status == 200
        assert call("POST", url + "/webhook", captured("req-0079-POST-webhook.json"), basic()).status == 200
        assert call("GET", url + "/versions").status == 401
        missing = call("GET", url + "/nowhere", headers=basic())
        assert missing.status == 404 and missing.json()["error"] == "not found"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_serve_unknown_function_explains(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lsfn.shared.cli", "serve", "no-such-function"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "no function 'no-such-function'" in done.stderr


def test_interactive_context_shapes_reach_the_model(function: Function) -> None:
    """A negative click and a context at the top level (older clients) are read the same way."""
    body = captured("req-0067-POST-predict.json")
    legacy = copy.deepcopy(body)
    legacy["context"] = legacy["params"].pop("context")
    for payload in (body, legacy):
        response = call("POST", function.url + "/predict", payload, basic())
        assert box(response.json()["results"][0]["result"][0]) == (15.625, 25.0, 31.25, 37.5)
