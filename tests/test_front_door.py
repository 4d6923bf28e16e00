"""The front door (`lsfn serve FUNCTION --upstream URL`): what it answers itself, what it forwards
and how, against a recording stand-in for the GPU function; and, as a process, that it imports
no model library while it serves."""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client

from lsfn.shared.runtime.front_door import create_front_door
from lsfn.shared.runtime.upstream import Answer as UpstreamAnswer
from lsfn.shared.runtime.upstream import HttpUpstream
from lsfn.shared.settings import Settings
from tests.functions.bright.main import BrightModel
from tests.servers import Answer, Hit, RecordingServer, free_port
from tests.serving import Function, call, network_attempts, network_guard
from tests.test_runtime_http import PASSWORD, USER, basic, captured, png

ROOT = Path(__file__).parent.parent
RECT = captured("req-0013-POST-predict.json")["label_config"]
SETUP = captured("req-0002-POST-setup.json")


def predict_body(count: int, context: dict[str, Any] | None = None) -> dict[str, Any]:
    body = captured("req-0013-POST-predict.json")
    body["tasks"] = [{"id": 100 + i, "data": {"image": f"/data/upload/2/img{i}.png"}} for i in range(count)]
    body["params"]["context"] = context
    return body


def echo(hit: Hit) -> Answer:
    """The GPU function's stand-in: one prediction per task, naming the task."""
    tasks = json.loads(hit.body)["tasks"]
    results = [{"result": [], "score": task["id"], "model_version": "bright-1"} for task in tasks]
    return Answer(200, json.dumps({"results": results}).encode(), {"Content-Type": "application/json"})


def health_up(hit: Hit) -> Answer:
    return Answer(200, b'{"status":"UP"}', {"Content-Type": "application/json"})


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.routes["/predict"] = echo
    server.routes["/health"] = health_up
    server.routes["/setup"] = Answer(200, b'{"model_version":"bright-1"}', {"Content-Type": "application/json"})
    server.routes["/webhook"] = Answer(200, b'{"status":"queued"}', {"Content-Type": "application/json"})
    server.routes["/versions"] = Answer(200, b'{"versions":["bright-1","bright-0"]}', {"Content-Type": "application/json"})
    yield server
    server.close()


@contextmanager
def front_door(upstream_url: str, **env: str) -> Iterator[tuple[str, Any]]:
    """A front door for the bright test function, served over HTTP in this process."""
    settings = Settings.model_validate({"UPSTREAM_URL": upstream_url, **env})
    app = create_front_door(BrightModel, settings=settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app.extensions["lsfn"]
    finally:
        server.shutdown()


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    text = call("GET", url + "/metrics", headers=headers).data.decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


# -- answered by the front door ---------------------------------------------------------------------


def test_health_answers_at_once_with_the_upstream_state(upstream: RecordingServer) -> None:
    with front_door(upstream.url) as (url, _):
        health = call("GET", url + "/health")
        assert health.status == 200
        body = health.json()
        assert body["status"] == "UP" and body["upstream"] == {"state": "cold"}
        assert call("GET", url + "/").status == 200
    assert upstream.hits == []  # asking about the upstream never wakes it


def test_health_stays_fast_while_the_upstream_is_cold(upstream: RecordingServer) -> None:
    """A wake-up waiting on an upstream that takes long to start (the platform holds the
    connection, then 503 "loading") never slows the front door's own /health."""
    started = threading.Event()

    def cold_health(hit: Hit) -> Answer:
        time.sleep(0.2)  # the platform holds the request while the instance starts
        if not started.is_set():
            return Answer(503, b'{"status":"LOADING"}', {"Retry-After": "0.2", "Content-Type": "application/json"})
        return health_up(hit)

    upstream.routes["/health"] = cold_health
    with front_door(upstream.url) as (url, _):
        assert call("POST", url + "/setup", SETUP).status == 200
        wait_for(lambda: "/health" in upstream.paths())
        latencies = [timed_health(url) for _ in range(10)]
        assert call("GET", url + "/health").json()["upstream"]["state"] == "warming"
        assert statistics.median(latencies) < 0.1, latencies
        started.set()
        wait_for(lambda: call("GET", url + "/health").json()["upstream"]["state"] == "ready")


def test_setup_checks_the_config_answers_the_version_and_wakes_the_upstream(upstream: RecordingServer) -> None:
    with front_door(upstream.url) as (url, _):
        bad = dict(SETUP, schema="<View><Image name='image' value='$image'/><Choices name='c' toName='image'><Choice value='a'/></Choices></View>")
        refused = call("POST", url + "/setup", bad)
        assert refused.status == 422 and "RectangleLabels" in refused.json()["detail"]
        assert upstream.hits == []  # a config the function cannot serve wakes nothing
        answer = call("POST", url + "/setup", SETUP)
        assert answer.status == 200 and answer.json() == {"model_version": "bright-1"}
        wait_for(lambda: upstream.paths() == ["/health", "/setup"])
        assert json.loads(upstream.hits[1].body) == SETUP
        wait_for(lambda: call("GET", url + "/health").json()["upstream"]["state"] == "ready")


def test_setup_learns_the_upstreams_version_for_the_config(upstream: RecordingServer) -> None:
    upstream.routes["/setup"] = Answer(200, b'{"model_version":"bright-2@cafe"}', {"Content-Type": "application/json"})
    with front_door(upstream.url) as (url, door):
        assert call("POST", url + "/setup", SETUP).json() == {"model_version": "bright-1"}
        wait_for(lambda: door.link.version_for(SETUP["schema"]) is not None)
        # What the upstream stamps on predictions is what Label Studio must compare with.
        assert call("POST", url + "/setup", SETUP).json() == {"model_version": "bright-2@cafe"}


def test_versions_are_the_upstreams_when_warm_else_the_last_known(upstream: RecordingServer) -> None:
    with front_door(upstream.url) as (url, _):
        assert call("GET", url + "/versions").json()["versions"] == ["bright-1"]  # cold: the spec's
        assert "/versions" not in upstream.paths()
        call("POST", url + "/predict", predict_body(1))  # now it is warm
        assert call("GET", url + "/versions").json()["versions"] == ["bright-1", "bright-0"]
        upstream.routes["/versions"] = Answer(500, b"{}")
        assert call("GET", url + "/versions").json()["versions"] == ["bright-1", "bright-0"]


def test_a_failed_upstream_is_reported_to_authenticated_callers_only(upstream: RecordingServer) -> None:
    failed = {"status": "FAILED", "error": "model failed to load", "detail": "WeightsError: /app/models/x.pt is corrupt"}
    upstream.routes["/health"] = Answer(503, json.dumps(failed).encode(), {"Content-Type": "application/json"})
    upstream.routes["/predict"] = Answer(503, json.dumps(failed).encode(), {"Content-Type": "application/json"})
    with front_door(upstream.url, BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD) as (url, _):
        assert call("POST", url + "/setup", SETUP, basic()).status == 200
        wait_for(lambda: call("GET", url + "/health").json()["upstream"]["state"] == "failed")
        anonymous = call("GET", url + "/health")
        assert anonymous.status == 200 and "x.pt" not in anonymous.data.decode()
        assert "x.pt is corrupt" in call("GET", url + "/health", headers=basic()).json()["upstream"]["detail"]
        # The upstream's own answer is returned as it gave it (not retried: no Retry-After, not loading).
        response = call("POST", url + "/predict", predict_body(2), basic())
        assert response.status == 503 and response.json() == failed
        assert upstream.paths().count("/predict") == 1


# -- forwarded ----------------------------------------------------------------------------------------


def test_predict_is_forwarded_with_the_front_doors_credentials_only(upstream: RecordingServer) -> None:
    with front_door(upstream.url, BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, MAX_BODY_BYTES="4096") as (url, _):
        body = predict_body(3)
        assert call("POST", url + "/predict", body).status == 401
        assert call("POST", url + "/predict", body, {"Authorization": "Basic bm86bm8="}).status == 401
        too_big = predict_body(60)
        assert call("POST", url + "/predict", too_big, basic()).status == 413
        assert upstream.hits == []  # nothing unauthenticated or oversized was forwarded
        response = call("POST", url + "/predict", body, {**basic(), "X-Request-Id": "req-42"})
        assert response.status == 200
        assert [item["score"] for item in response.json()["results"]] == [100, 101, 102]
        (hit,) = upstream.hits
        assert json.loads(hit.body) == body
        assert "authorization" not in hit.headers
        assert hit.headers["x-request-id"] == "req-42"
        assert 80 < float(hit.headers["x-predict-deadline"]) < 90


def test_predict_waits_through_a_cold_start(upstream: RecordingServer) -> None:
    loading = {"status": "LOADING", "error": "model is loading", "detail": "setup and warmup are running"}
    answers = iter([Answer(503, json.dumps(loading).encode(), {"Retry-After": "0.2"})] * 3)
    upstream.routes["/predict"] = lambda hit: next(answers, None) or echo(hit)
    with front_door(upstream.url) as (url, _):
        response = call("POST", url + "/predict", predict_body(2))
        assert response.status == 200 and [i["score"] for i in response.json()["results"]] == [100, 101]
        assert upstream.paths().count("/predict") == 4
        assert metric(url, 'lsfn_upstream_attempts_total{outcome="loading"') == 3
        assert metric(url, "lsfn_upstream_cold_start_wait_seconds_count") == 1


def test_predict_retries_a_refused_connection_until_the_upstream_listens() -> None:
    port = free_port()
    late: list[RecordingServer] = []

    def start_later() -> None:
        time.sleep(1.0)
        server = RecordingServer(port=port)
        server.routes["/predict"] = echo
        late.append(server)

    threading.Thread(target=start_later, daemon=True).start()
    try:
        with front_door(f"http://127.0.0.1:{port}") as (url, _):
            response = call("POST", url + "/predict", predict_body(1))
            assert response.status == 200 and response.json()["results"][0]["score"] == 100
            assert metric(url, 'lsfn_upstream_attempts_total{outcome="refused"') >= 2
    finally:
        for server in late:
            server.close()


def test_other_answers_are_returned_as_the_upstream_gave_them(upstream: RecordingServer) -> None:
    upstream.routes["/predict"] = Answer(500, b'{"error":"internal error","detail":"boom"}', {"Content-Type": "application/json"})
    with front_door(upstream.url) as (url, _):
        response = call("POST", url + "/predict", predict_body(2))
        assert response.status == 500 and response.json() == {"error": "internal error", "detail": "boom"}
        assert upstream.paths() == ["/predict"]


def test_a_large_batch_goes_in_concurrent_chunks_reassembled_in_order(upstream: RecordingServer) -> None:
    in_flight, peak = [0], [0]
    lock = threading.Lock()
    pairs = threading.Barrier(2, timeout=10)  # chunks arrive two at a time, or this breaks

    def slow_echo(hit: Hit) -> Answer:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        pairs.wait()
        with lock:
            in_flight[0] -= 1
        if json.loads(hit.body)["tasks"][0]["id"] == 103:  # the second chunk fails
            return Answer(500, b'{"error":"internal error","detail":"boom"}')
        return echo(hit)

    upstream.routes["/predict"] = slow_echo
    with front_door(upstream.url, UPSTREAM_CHUNK_TASKS="3", UPSTREAM_CONCURRENCY="2") as (url, _):
        response = call("POST", url + "/predict", predict_body(10))
    assert response.status == 200
    results = response.json()["results"]
    assert len(results) == 10
    assert [r.get("score") for r in results] == [100, 101, 102, None, None, None, 106, 107, 108, 109]
    assert all("upstream answered 500" in r["error"] and "result" not in r for r in results[3:6])
    sent = [[t["id"] for t in json.loads(h.body)["tasks"]] for h in upstream.hits]
    assert sorted(sent) == [[100, 101, 102], [103, 104, 105], [106, 107, 108], [109]]
    assert peak[0] == 2


def test_tasks_not_answered_by_the_deadline_are_error_items(upstream: RecordingServer) -> None:
    def slow_echo(hit: Hit) -> Answer:
        time.sleep(0.8)
        return echo(hit)

    upstream.routes["/predict"] = slow_echo
    with front_door(upstream.url, UPSTREAM_CHUNK_TASKS="1", UPSTREAM_CONCURRENCY="1", PREDICT_DEADLINE="2") as (url, _):
        response = call("POST", url + "/predict", predict_body(5))
    results = response.json()["results"]
    assert response.status == 200 and len(results) == 5
    done = [r for r in results if "result" in r]
    late = [r for r in results if "result" not in r]
    assert [r["score"] for r in done] == [100, 101][: len(done)] and 1 <= len(done) <= 2
    assert late and all("not predicted before the deadline" in r["error"] for r in late)
    assert len(upstream.hits) <= 3  # answered at the deadline: the last chunks were never sent
    # What the upstream was told it has left only ever shrinks, and never reaches past the
    # deadline less the answer's way back (2 s - 1 s; sent in milliseconds: a chunk forwarded
    # within half a millisecond of the request's arrival is told 1.000).
    left = [float(h.headers["x-predict-deadline"]) for h in upstream.hits]
    assert left == sorted(left, reverse=True) and left[0] <= 1.0


def test_webhooks_are_answered_at_once_and_delivered_in_the_background(upstream: RecordingServer) -> None:
    gate = threading.Event()

    def held(hit: Hit) -> Answer:
        gate.wait(10)
        return Answer(200, b'{"status":"queued"}')

    upstream.routes["/webhook"] = held
    event = captured("req-0079-POST-webhook.json")
    with front_door(upstream.url, WEBHOOK_SECRET="hook") as (url, door):
        assert call("POST", url + "/webhook", event).status == 401
        answer = call("POST", url + "/webhook", event, {"X-Webhook-Secret": "hook"})
        assert answer.status == 200 and answer.json()["status"] == "queued"  # while the upstream holds it
        # The upstream is stuck on the first event: the queue fills (64 events), then 503.
        statuses = [call("POST", url + "/webhook", event, {"X-Webhook-Secret": "hook"}).status for _ in range(70)]
        assert statuses.count(200) >= 60 and statuses[-1] == 503
        gate.set()
        door._webhooks.join()
    hooks = [h for h in upstream.hits if h.path == "/webhook"]
    assert len(hooks) == statuses.count(200) + 1
    assert json.loads(hooks[0].body) == event and "x-webhook-secret" not in hooks[0].headers


def test_concurrent_requests_wait_for_a_slot_and_a_flood_is_refused(upstream: RecordingServer) -> None:
    release = threading.Event()

    def held_echo(hit: Hit) -> Answer:
        release.wait(20)
        return echo(hit)

    upstream.routes["/predict"] = held_echo
    env = {"UPSTREAM_MAX_REQUESTS": "2", "ADMIT_QUEUE": "2", "ADMIT_TIMEOUT": "15"}
    with front_door(upstream.url, **env) as (url, door):
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, "POST", url + "/predict", predict_body(1)) for _ in range(8)]
            # Two are forwarded and held, two wait for them, four find the queue full.
            wait_for(lambda: len(upstream.hits) == 2 and door._gate.waiting == 2)
            wait_for(lambda: sum(f.done() for f in futures) == 4)
            refused = [f.result() for f in futures if f.done()]  # answered while the upstream holds
            health = [timed_health(url) for _ in range(5)]  # while the upstream is busy
            release.set()
            answers = [f.result() for f in futures]
        assert [a.status for a in refused] == [503] * 4
        assert all(a.headers["Retry-After"] == "1" for a in refused)
        assert sorted(a.status for a in answers) == [200] * 4 + [503] * 4  # the waiting ones were served
        assert statistics.median(health) < 0.1, health


def timed_health(url: str) -> float:
    started = time.monotonic()
    assert call("GET", url + "/health").status == 200
    return time.monotonic() - started


# -- the process ---------------------------------------------------------------------------------------

# Records, from inside every process of the server (gunicorn forks its worker), each import of a
# model library: the audit hook sees imports done at any time, not only at start.
_IMPORT_WATCH = '''
import os, sys
_log = os.environ.get("LSFN_IMPORT_LOG")
_heavy = {"torch", "ultralytics", "transformers", "sam2", "label_studio_sdk"}

def _watch(event, args):
    if event == "import" and args[0].split(".")[0] in _heavy:
        with open(_log, "a") as fh:
            fh.write(f"{os.getpid()} {args[0]}\\n")

if _log:
    sys.addaudithook(_watch)
    with open(_log, "a") as fh:
        fh.write(f"{os.getpid()} watching\\n")
'''


BRUSH = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="Dog"/></BrushLabels></View>'
YOLO = ("<View><Image name='image' value='$image'/><RectangleLabels name='label' toName='image' model_path='shapes.pt'>"
        "<Label value='circle'/><Label value='square'/><Label value='triangle'/></RectangleLabels></View>")  # fmt: skip
CONFIGS = {"yolo": YOLO, "sam2": BRUSH, "grounding_dino": RECT, "grounding_sam": BRUSH}


@pytest.mark.parametrize("function", sorted(CONFIGS))
def test_the_front_door_process_imports_no_model_library(function: str, tmp_path: Path, upstream: RecordingServer) -> None:
    """Nor does it reach anything but the upstream on loopback: the network guard refuses and
    records every other name lookup and connection."""
    env = network_guard(tmp_path)
    with (Path(env["PYTHONPATH"]) / "sitecustomize.py").open("a") as fh:
        fh.write(_IMPORT_WATCH)
    log = tmp_path / "imports.txt"
    # The weights files the functions name: the front door reads only their content hashes.
    models = tmp_path / "models"
    (models / "grounding-dino-tiny").mkdir(parents=True)
    (models / "grounding-dino-tiny" / "model.safetensors").write_bytes(b"weights")
    (models / "sam2.1_hiera_large.pt").write_bytes(b"weights")
    shutil.copyfile(ROOT / "functions" / "yolo" / "models" / "shapes.pt", models / "shapes.pt")
    env["LSFN_IMPORT_LOG"] = str(log)
    door = Function(function, tmp_path, env, models, args=("--upstream", upstream.url))
    config = CONFIGS[function]
    try:
        door.wait_ready(10)
        # Every route, the forwarded ones included, and the background wake-up.
        for method, path, body in [("GET", "/health", None), ("POST", "/setup", dict(SETUP, schema=config)),
                                   ("GET", "/versions", None), ("POST", "/predict", dict(predict_body(2), label_config=config)),
                                   ("POST", "/webhook", captured("req-0079-POST-webhook.json")),
                                   ("GET", "/metrics", None)]:  # fmt: skip
            assert call(method, door.url + path, body).status == 200, (path, call(method, door.url + path, body).data)
        wait_for(lambda: "/setup" in upstream.paths())  # the wake-up ran too
    finally:
        door.close()
    assert "serving the front door" in door.log_path.read_text()
    lines = log.read_text().splitlines()  # the hook was installed, and saw no model library
    assert lines and all(line.endswith(" watching") for line in lines), lines
    assert network_attempts(tmp_path) == ""


# -- the upstream interface -----------------------------------------------------------------------


def test_every_attempt_tells_the_upstream_the_time_left(upstream: RecordingServer) -> None:
    busy = {"error": "overloaded", "detail": "all slots are taken"}
    answers = iter([Answer(503, json.dumps(busy).encode(), {"Retry-After": "0.5"})] * 2)
    upstream.routes["/predict"] = lambda hit: next(answers, None) or echo(hit)
    with front_door(upstream.url, PREDICT_DEADLINE="20") as (url, _):
        assert call("POST", url + "/predict", predict_body(1)).status == 200
    left = [float(h.headers["x-predict-deadline"]) for h in upstream.hits]
    assert len(left) == 3 and left[0] - left[2] >= 0.9  # retried 0.5 s apart, each told what was left then


def test_an_upstream_that_failed_to_load_is_reported_failed(upstream: RecordingServer) -> None:
    failed = {"error": "model failed to load", "detail": "see /health and the function's log"}
    upstream.routes["/predict"] = Answer(503, json.dumps(failed).encode(), {"Content-Type": "application/json"})
    with front_door(upstream.url) as (url, _):
        assert call("POST", url + "/predict", predict_body(1)).status == 503
        assert call("GET", url + "/health").json()["upstream"]["state"] == "failed"


def test_the_bearer_token_comes_from_the_provider(upstream: RecordingServer) -> None:
    tokens = iter(["first", "second"])
    settings = Settings.model_validate({"UPSTREAM_URL": upstream.url})
    app = create_front_door(BrightModel, HttpUpstream(upstream.url, token=lambda: next(tokens)), settings)
    client = Client(app)
    for _ in range(2):
        assert client.post("/predict", json=predict_body(1), headers={"Authorization": "Basic dTpw"}).status_code == 200
    assert [h.headers["authorization"] for h in upstream.hits] == ["Bearer first", "Bearer second"]


def jwt(exp: float) -> str:
    """An unsigned token with an ``exp`` claim, shaped as Google's ID tokens are."""
    import base64

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'aud': 'x', 'exp': exp})}.c2ln"


def test_upstream_auth_google_id_token_sends_a_token_for_the_upstreams_url(upstream: RecordingServer,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """UPSTREAM_AUTH=google-id-token (what the Cloud Run deploy sets): every call carries an ID
    token minted for the upstream's URL, reused until shortly before it expires."""
    from lsfn.shared.runtime import id_token

    minted: list[str] = []

    def fetch(audience: str) -> str:
        minted.append(audience)
        return jwt(time.time() + 3600)

    monkeypatch.setattr(id_token, "_fetch_from_google", fetch)
    settings = Settings.model_validate({"UPSTREAM_URL": upstream.url, "UPSTREAM_AUTH": "google-id-token"})
    client = Client(create_front_door(BrightModel, settings=settings))
    for _ in range(3):
        assert client.post("/predict", json=predict_body(1)).status_code == 200
    assert minted == [upstream.url]
    (sent,) = {h.headers["authorization"] for h in upstream.hits}  # one token, reused
    assert sent.startswith("Bearer ") and sent.count(".") == 2


def test_an_id_token_is_replaced_before_it_expires() -> None:
    from lsfn.shared.runtime.id_token import REFRESH_MARGIN, GoogleIdToken

    now = [1000.0]
    tokens = iter([jwt(now[0] + 3600), jwt(now[0] + 7200)])
    provider = GoogleIdToken("https://gpu.example", fetch=lambda audience: next(tokens), clock=lambda: now[0])
    first = provider()
    assert provider() == first
    now[0] += 3600 - REFRESH_MARGIN + 1  # within the margin of its expiry
    assert provider() != first


class InProcess:
    """An upstream called in the same process, as Modal's ``.remote()`` is: here the bright
    function's own runtime, through its WSGI app. ``explode_on`` makes one task's call raise."""

    def __init__(self, app: Any, explode_on: int | None = None) -> None:
        self.client = Client(app)
        self.explode_on = explode_on

    def call(self, method: str, path: str, body: bytes | None, headers: Any, timeout: float) -> Answer:
        if body and self.explode_on in [t["id"] for t in json.loads(body).get("tasks", [])]:
            raise RuntimeError("the in-process call failed")
        response = self.client.open(path, method=method, data=body, headers=dict(headers))
        return UpstreamAnswer(response.status_code, response.get_data(), response.headers)


def test_an_in_process_upstream_serves_the_same_answers_and_a_failing_chunk_fails_alone(
    tmp_path: Path, label_studio: RecordingServer
) -> None:
    from lsfn.shared.runtime import create_app

    label_studio.routes["/data/upload/2/img.png"] = Answer(200, png(64, 48, [(10, 10, 20, 20)]), {"Content-Type": "image/png"})
    function_settings = Settings.model_validate({"MODEL_ROOT": str(tmp_path), "LABEL_STUDIO_URL": label_studio.url})
    function = create_app(BrightModel, function_settings)
    body = predict_body(5)
    for task in body["tasks"]:
        task["data"]["image"] = "/data/upload/2/img.png"
    settings = Settings.model_validate({"UPSTREAM_URL": "in-process", "UPSTREAM_CHUNK_TASKS": "2"})
    door = Client(create_front_door(BrightModel, InProcess(function, explode_on=102), settings))
    results = door.post("/predict", json=body).get_json()["results"]
    direct = Client(function).post("/predict", json=body).get_json()["results"]

    def regions(items: list[dict[str, Any]]) -> list[Any]:  # region ids are random
        return [[{k: v for k, v in region.items() if k != "id"} for region in item["result"]] for item in items]

    assert regions(results[:2] + results[4:]) == regions(direct[:2] + direct[4:])
    assert all(item["result"] for item in direct)
    assert all("result" not in r and "front door failed on this chunk" in r["error"] for r in results[2:4])
