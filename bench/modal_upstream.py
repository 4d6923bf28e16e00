"""What the Modal front door's in-process upstream costs, against `lsfn serve` on the same bodies,
measured in one run (CPU).

    "$(scripts/venv)/bin/python" bench/modal_upstream.py [--requests N]

1. Warm overhead. `lsfn serve yolo` (the shipped shapes detector) is the baseline. The same
   function as deploy/modal_app.py builds it for Modal runs beside it (tests/modal_local.py):
   the front door's WSGI app over HTTP, its upstream the GPU class's ``.local()`` call, which
   answers through ``Runtime.call`` (on Modal the call is ``.spawn()`` on the class: Modal's RPC
   then adds its own latency, which cannot be measured here). One keep-alive client sends the
   same /predict bodies (1 and 3 tasks of the shipped sample image, the quick start's label
   config) to both, alternating request by request; prints p50 and p99 of each, the ratio of
   the p50s (1.0x: the front door and the in-process call cost nothing) and the difference.
2. Start-up phases of the GPU class on this CPU: the set-up inside ``@modal.enter(snap=True)``
   (the part a memory snapshot saves), and the move and warm-up after restore.
"""

from __future__ import annotations

import argparse
import base64
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

from front_door import timed_post  # noqa: E402
from processes import free_port, serve_function, start_group, stop_group, wait_healthy  # noqa: E402

SAMPLE = ROOT / "functions" / "yolo" / "models" / "sample.png"
CONFIG = ("<View><Image name='image' value='$image'/><RectangleLabels name='label' toName='image' model_path='shapes.pt'>"
          "<Label value='circle'/><Label value='square'/><Label value='triangle'/></RectangleLabels></View>")  # fmt: skip


def body(count: int) -> bytes:
    image = "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
    tasks = [{"id": i + 1, "data": {"image": image}} for i in range(count)]
    return json.dumps({"tasks": tasks, "label_config": CONFIG, "project": "1.1700000000",
                       "params": {"login": None, "password": None, "context": None}}).encode()  # fmt: skip


def quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_ROOT", "BASIC_AUTH", "MODAL_"))}
    return {**env, "LOG_LEVEL": "WARNING", "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def warm_overhead(requests: int, workdir: Path) -> None:
    function, port = serve_function("yolo", ROOT, quiet_env(), workdir / "serve.log")
    modal_port = free_port()
    modal = start_group([sys.executable, "-m", "tests.modal_local", "yolo", "--port", str(modal_port)], ROOT, quiet_env(),
                        workdir / "modal-local.log")  # fmt: skip
    try:
        why = wait_healthy(modal, modal_port, 300)
        if why is not None:
            raise SystemExit(f"the Modal app run here {why}:\n{(workdir / 'modal-local.log').read_text()[-3000:]}")
        print(f"warm /predict, yolo, {requests} requests each, one keep-alive client, alternating")
        print(f"{'body':<10}{'lsfn serve p50':>15}{'p99':>9}{'Modal front door p50':>22}{'p99':>9}{'ratio p50':>11}{'extra p50':>11}")
        for count in (1, 3):
            data = body(count)
            direct = http.client.HTTPConnection("127.0.0.1", port)
            through = http.client.HTTPConnection("127.0.0.1", modal_port)
            for _ in range(20):  # warm both paths (connections, the model's first calls)
                timed_post(direct, data), timed_post(through, data)
            served: list[float] = []
            modal_times: list[float] = []
            for _ in range(requests):
                served.append(timed_post(direct, data))
                modal_times.append(timed_post(through, data))
            d, m = sorted(served), sorted(modal_times)
            p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
            ratio = statistics.median(m) / statistics.median(d)
            extra = (statistics.median(m) - statistics.median(d)) * 1000
            print(f"{count} task{'s' if count > 1 else ' ':<4}{p(d, .5):>13.2f}ms{p(d, .99):>7.2f}ms"
                  f"{p(m, .5):>20.2f}ms{p(m, .99):>7.2f}ms{ratio:>10.2f}x{extra:>9.2f}ms")  # fmt: skip
            direct.close(), through.close()
    finally:
        stop_group(modal)
        stop_group(function)


def start_phases() -> None:
    from lsfn.deploy.modal_cli import load_app
    from lsfn.deploy.modal_spec import ModalSpec

    os.environ.update({"LOG_LEVEL": "WARNING", "YOLO_OFFLINE": "1"})
    gpu = load_app(ModalSpec(function="yolo")).Function()
    started = time.perf_counter()
    gpu.handle.local("GET", "/health", None, {})  # both enter phases: set-up on the CPU, then the loader started
    runtime = gpu.runtime
    runtime.loader.wait(300)
    total = time.perf_counter() - started
    print(f"\nGPU class start-up on this CPU, yolo (shipped detector): set-up before the snapshot "
          f"{gpu.before_snapshot_seconds:.2f} s, move + warm-up after restore {runtime.loader.load_seconds:.2f} s "
          f"(all {total:.2f} s; a restored container skips the first)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warm_overhead(args.requests, Path(tmp))
    start_phases()


if __name__ == "__main__":
    main()
