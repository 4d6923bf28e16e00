"""What the front door costs, and what a cold start looks like through it, measured in one run.

    "$(scripts/venv)/bin/python" bench/front_door.py [--requests N] [--start-delay S]

0. Start-up. `lsfn serve yolo --upstream ...` (the front door: no model) and `lsfn serve yolo`
   (the function: torch, ultralytics, the shipped detector) are started; prints the time until
   each answers /health with 200, and the ratio.
1. Warm overhead. The null model (bench/null_function.py: no fetching, no inference) is served
   by `lsfn serve`, and its front door (`lsfn serve ... --upstream`) forwards to it. One client
   sends the same /predict bodies Label Studio 1.23 sent (1 and 3 tasks) to the function
   directly and through the front door, alternating request by request; prints p50 and p99
   latency of each and the ratio (the front door's extra hop: 1.0x would be free).
2. Cold start. A real Label Studio (the end-to-end tests' cached install) is connected to the
   front door of the null model running on the local scale-to-zero platform
   (tests/platform.py, ``--start-delay`` standing in for the platform's own provisioning);
   times "Retrieve predictions" from a scaled-to-zero upstream until the prediction is stored,
   against the same with the upstream warm. Connected directly to the scaled-to-zero function,
   Label Studio stores nothing at all (tests/test_scale_to_zero.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from processes import serve_function, start_group, stop_group, wait_healthy  # noqa: E402

from tests.label_studio import LabelStudioServer  # noqa: E402
from tests.platform import ScaleToZero  # noqa: E402
from tests.servers import free_port  # noqa: E402

NULL = ROOT / "bench" / "null_function.py"
REQUEST = json.loads((ROOT / "tests" / "data" / "ls-1.23" / "req-0013-POST-predict.json").read_text())["body"]


def quiet_env() -> dict[str, str]:
    return {**os.environ, "LOG_LEVEL": "WARNING"}


def serve_front_door(upstream: str, log: Path) -> tuple[object, int]:
    port = free_port()
    argv = [sys.executable, "-m", "lsfn.shared.cli", "serve", str(NULL), "--port", str(port), "--upstream", upstream]
    process = start_group(argv, ROOT, quiet_env(), log)
    why = wait_healthy(process, port, 60)
    if why is not None:
        stop_group(process)
        raise SystemExit(f"the front door {why}:\n{log.read_text()[-3000:]}")
    return process, port


def startup(workdir: Path) -> None:
    timings = {}
    for role, extra in (("front door", ["--upstream", "http://127.0.0.1:9"]), ("function", [])):
        port = free_port()
        argv = [sys.executable, "-m", "lsfn.shared.cli", "serve", "yolo", "--port", str(port), *extra]
        started = time.perf_counter()
        process = start_group(argv, ROOT, quiet_env(), workdir / f"startup-{role.replace(' ', '-')}.log")
        why = wait_healthy(process, port, 300)
        timings[role] = time.perf_counter() - started
        stop_group(process)
        if why is not None:
            raise SystemExit(f"the yolo {role} {why}")
    door, function = timings["front door"], timings["function"]
    print(f"start-up to /health 200, yolo: front door {door:.2f} s, function {function:.2f} s "
          f"(the front door is {function / door:.1f}x sooner)\n")  # fmt: skip


def timed_post(conn: http.client.HTTPConnection, body: bytes) -> float:
    started = time.perf_counter()
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200 and b'"result"' in data, data[:300]
    return elapsed


def warm_overhead(requests: int, workdir: Path) -> None:
    function, port = serve_function(str(NULL), ROOT, quiet_env(), workdir / "function.log")
    door, door_port = serve_front_door(f"http://127.0.0.1:{port}", workdir / "front-door.log")
    try:
        print(f"warm /predict, {requests} requests each, one keep-alive client, alternating")
        print(f"{'body':<10}{'direct p50':>12}{'p99':>9}{'front door p50':>16}{'p99':>9}{'ratio p50':>11}")
        for count in (1, 3):
            body = json.dumps({**REQUEST, "tasks": (REQUEST["tasks"] * 3)[:count]}).encode()
            direct = http.client.HTTPConnection("127.0.0.1", port)
            through = http.client.HTTPConnection("127.0.0.1", door_port)
            for _ in range(50):  # warm both paths (connections, first-request work)
                timed_post(direct, body), timed_post(through, body)
            times: dict[str, list[float]] = {"direct": [], "door": []}
            for _ in range(requests):
                times["direct"].append(timed_post(direct, body))
                times["door"].append(timed_post(through, body))
            d, f = (sorted(times[k]) for k in ("direct", "door"))
            p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
            ratio = statistics.median(f) / statistics.median(d)
            print(f"{count} task{'s' if count > 1 else ' ':<4}{p(d, .5):>10.2f}ms{p(d, .99):>7.2f}ms"
                  f"{p(f, .5):>14.2f}ms{p(f, .99):>7.2f}ms{ratio:>10.2f}x")  # fmt: skip
            direct.close(), through.close()
    finally:
        stop_group(door)  # type: ignore[arg-type]
        stop_group(function)


def retrieve_and_wait(ls: LabelStudioServer, project: int, task: int) -> float:
    for prediction in ls.api("GET", f"/api/predictions?task={task}").json():
        ls.api("DELETE", f"/api/predictions/{prediction['id']}")
    started = time.perf_counter()
    selected = {"selectedItems": {"all": True, "excluded": []}}
    assert ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", selected).status == 200
    elapsed = time.perf_counter() - started
    assert ls.api("GET", f"/api/predictions?task={task}").json(), "no prediction was stored"
    return elapsed


def cold_start(start_delay: float, workdir: Path, rounds: int) -> None:
    ls = LabelStudioServer(workdir / "label-studio")
    platform = None
    door = None
    try:
        ls.wait_ready()
        env: dict[str, str | None] = {"LOG_LEVEL": "WARNING"}
        platform = ScaleToZero(NULL, workdir / "gpu", env, workdir / "models", idle=2.0, start_delay=start_delay)
        door, door_port = serve_front_door(platform.url, workdir / "front-door-cold.log")
        project = ls.api("POST", "/api/projects", {"title": "bench", "label_config": REQUEST["label_config"]}).json()["id"]
        ls.api("POST", f"/api/projects/{project}/import", [{"data": {"image": "/data/upload/1/none.png"}}])
        (task,) = [t["id"] for t in ls.api("GET", f"/api/tasks?project={project}").json()["tasks"]]
        backend = {"url": f"http://127.0.0.1:{door_port}", "project": project, "title": "lsfn"}
        assert ls.api("POST", "/api/ml", backend).status == 201
        cold, warm = [], []
        for _ in range(rounds):
            platform.wait_stopped()
            cold.append(retrieve_and_wait(ls, project, task))
            warm.append(retrieve_and_wait(ls, project, task))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"\n'Retrieve predictions' to a stored prediction, Label Studio -> front door -> local platform "
              f"(start delay {start_delay:g} s), median of {rounds}:")  # fmt: skip
        print(f"  upstream scaled to zero: {c:6.2f} s  (platform delay {start_delay:g} s + process start + model load)")
        print(f"  upstream warm:           {w:6.2f} s")
        print(f"  ratio cold/warm:         {c / w:6.1f}x   (directly connected to the cold function: nothing stored)")
    finally:
        if door is not None:
            stop_group(door)  # type: ignore[arg-type]
        if platform is not None:
            platform.close()
        ls.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true", help="only the warm overhead (no Label Studio)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        startup(Path(tmp))
        warm_overhead(args.requests, Path(tmp))
        if not args.skip_cold:
            cold_start(args.start_delay, Path(tmp), args.rounds)


if __name__ == "__main__":
    main()
