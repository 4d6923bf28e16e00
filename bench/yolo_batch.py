"""YOLO batching: one /predict with every task against one /predict per task, in the same run.

    "$(scripts/venv)/bin/python" bench/yolo_batch.py [--tasks N] [--repeat N] [--latency MS]

Serves functions/yolo (`lsfn serve yolo`) with an untrained yolov8n built here from
ultralytics' own yaml, offline: random weights, the real model's compute cost. A local stand-in
for Label Studio serves the task images (JPEG, shapes on noise) under /data/upload/, checks the
`Authorization: Token` header and answers each request --latency ms late, as a remote Label
Studio or bucket would. For 320x320 and 640x480 images it times, over HTTP on loopback:

  batched     one /predict with all N tasks (the function fetches them concurrently and infers
              them as batches, a chunk of tasks at a time)
  sequential  N single-task /predict calls, one after another on one keep-alive connection
              (what label-studio-ml-backend's per-task loop amounts to)

Both use the same images; each is timed --repeat times, alternating which goes first, and the
median is reported. The function runs with IMAGE_CACHE_BYTES=0 so every run fetches every
image, and the image server's request count checks that it did. Then cold start: from process
start to /health answering 200, and to the first single-task prediction answered, each in a
fresh process (median of --repeat).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw
from processes import free_port, start_group, stop_group, wait_healthy  # bench/

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WEIGHTS = "bench.pt"
SIZES: tuple[tuple[int, int], ...] = ((320, 320), (640, 480))  # (width, height)
# Untrained weights name their classes '0'..'79': label '0' maps onto class 0.
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    f'<RectangleLabels name="label" toName="image" model_path="{WEIGHTS}" model_score_threshold="0.25">'
    '<Label value="0"/></RectangleLabels></View>'
)
PREDICT_TIMEOUT = 600.0  # a CPU-only machine infers a large batch for a while


# -- the model and the images -----------------------------------------------------------------------


def build_weights(models: Path, config_dir: Path) -> Path:
    """An untrained yolov8n saved as ``models/bench.pt``, built without any download."""
    # Read by ultralytics when it is first imported: no network probes, settings in a temp dir.
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_VERBOSE"] = "False"  # no settings banner in the bench's output
    from ultralytics import YOLO

    models.mkdir(parents=True, exist_ok=True)
    path = models / WEIGHTS
    YOLO("yolov8n.yaml").save(str(path))
    return path


def make_jpeg(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A photo-like test image: a few filled shapes on coloured noise."""
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        size = int(rng.integers(min(width, height) // 8, min(width, height) // 3))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + size, y + size), fill=colour)
        else:
            draw.polygon([(x + size // 2, y), (x + size, y + size), (x, y + size)], fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


# -- the stand-in for Label Studio ----------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the function opens several connections at once


class ImageServer:
    """Serves ``files`` (URL path -> bytes) to callers with the right Token, ``latency`` s late."""

    def __init__(self, files: dict[str, bytes], token: str, latency: float) -> None:
        self.files = files
        self.token = token
        self.latency = latency
        self._lock = threading.Lock()
        self._served = 0
        self._refused = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as the function's connection pool and a real Label Studio use it.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _HTTPServer((HOST, 0), Handler)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def counts(self) -> tuple[int, int]:
        """(images served, requests refused) so far."""
        with self._lock:
            return self._served, self._refused

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(self.latency)  # the round trip to a remote host, before anything is sent
        data = self.files.get(urlsplit(handler.path).path)
        if handler.headers.get("Authorization") != f"Token {self.token}":
            status, body, kind = 401, b'{"detail":"Authentication credentials were not provided."}', "application/json"
        elif data is None:
            status, body, kind = 404, b'{"detail":"Not found."}', "application/json"
        else:
            status, body, kind = 200, data, "image/jpeg"
        with self._lock:
            if status == 200:
                self._served += 1
            else:
                self._refused += 1
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# -- the function -----------------------------------------------------------------------------------


@dataclass
class Function:
    """`lsfn serve yolo` in its own process group, its output in ``log``."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # time.perf_counter() just before the process was created

    def start(self) -> None:
        argv = [sys.executable, "-m", "lsfn.shared.cli", "serve", "yolo", "--port", str(self.port), "--host", HOST]
        self.started = time.perf_counter()
        self.process = start_group(argv, ROOT, self.env, self.log)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from process start until /health answered 200."""
        assert self.process is not None
        why = wait_healthy(self.process, self.port, timeout, HOST)
        if why is not None:
            self.fail(why)
        return time.perf_counter() - self.started

    def fail(self, why: str) -> NoReturn:
        tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        raise SystemExit(f"yolo_batch: the function {why}; its output:\n{tail}")

    def stop(self) -> None:
        stop_group(self.process)


# -- the client -------------------------------------------------------------------------------------


def predict_body(paths: Sequence[str], first_id: int = 1) -> bytes:
    tasks = [{"id": first_id + i, "data": {"image": path}} for i, path in enumerate(paths)]
    return json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}).encode()


def server_timing(header: str) -> dict[str, float]:
    """``fetch;dur=12.3, total;dur=40.1`` as {"fetch": 12.3, "total": 40.1} (milliseconds)."""
    phases: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    phases[name] = phases.get(name, 0.0) + float(value)
    return phases


@dataclass
class Answer:
    seconds: float  # wall time seen by the client
    timing: str  # the Server-Timing header
    results: list[Any]


def post_predict(conn: http.client.HTTPConnection, body: bytes, tasks: int) -> Answer:
    """One /predict on ``conn``; fails loudly unless it answers 200 with a result for each task."""
    started = time.perf_counter()
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    seconds = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"yolo_batch: /predict answered {response.status}: {data[:1000]!r}")
    results = json.loads(data).get("results")
    # A task whose image could not be fetched gets an item without "result": not a success.
    ok = isinstance(results, list) and len(results) == tasks
    ok = ok and all(isinstance(item, dict) and isinstance(item.get("result"), list) for item in results)
    if not ok:
        raise SystemExit(f"yolo_batch: /predict did not answer one prediction for each of {tasks} tasks: {data[:1000]!r}")
    return Answer(seconds, response.getheader("Server-Timing") or "", results)


@dataclass
class Run:
    seconds: float
    phases: dict[str, float]  # Server-Timing summed over the run's requests (ms)
    timing: str  # the header of the run's first request


def run_batched(port: int, paths: Sequence[str]) -> Run:
    conn = http.client.HTTPConnection(HOST, port, timeout=PREDICT_TIMEOUT)
    try:
        answer = post_predict(conn, predict_body(paths), len(paths))
    finally:
        conn.close()
    return Run(answer.seconds, server_timing(answer.timing), answer.timing)


def run_sequential(port: int, paths: Sequence[str]) -> Run:
    bodies = [predict_body([path], first_id=i + 1) for i, path in enumerate(paths)]
    conn = http.client.HTTPConnection(HOST, port, timeout=PREDICT_TIMEOUT)
    phases: dict[str, float] = {}
    first = ""
    try:
        started = time.perf_counter()
        for body in bodies:
            answer = post_predict(conn, body, 1)
            first = first or answer.timing
            for name, ms in server_timing(answer.timing).items():
                phases[name] = phases.get(name, 0.0) + ms
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Run(seconds, phases, first)


def counted(images: ImageServer, mode: Callable[[int, Sequence[str]], Run], port: int, paths: Sequence[str]) -> Run:
    """``mode`` run, checking it fetched every image once (no cache hits, no refusals)."""
    served, refused = images.counts()
    run = mode(port, paths)
    served_after, refused_after = images.counts()
    if (served_after - served, refused_after - refused) != (len(paths), 0):
        raise SystemExit(
            f"yolo_batch: {mode.__name__} fetched {served_after - served} images ({refused_after - refused} refused)"
            f" for {len(paths)} tasks: the function must fetch every image once (is its image cache on?)"
        )
    return run


# -- the run ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.0f}" for name, ms in phases.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks per measurement (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, median reported (default 3)")
    parser.add_argument("--latency", type=float, default=50.0, help="image server latency per request, ms (default 50)")
    args = parser.parse_args()
    if args.tasks < 1 or args.repeat < 1 or args.latency < 0:
        parser.error("--tasks and --repeat must be positive, --latency not negative")
    # A plain `kill` must still stop the function (it runs in its own session).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # The function's environment: this shell's, before build_weights() sets ultralytics' variables.
    base_env = dict(os.environ)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lsfn-yolo-batch-")))
        config_dir = tmp / "ultralytics"
        config_dir.mkdir()
        build_weights(tmp / "models", config_dir)
        import torch  # imported by ultralytics above: versions and device for the header
        import ultralytics

        rng = np.random.default_rng(0)
        paths: dict[tuple[int, int], list[str]] = {}
        files: dict[str, bytes] = {}
        for width, height in SIZES:
            paths[width, height] = [f"/data/upload/1/bench-{width}x{height}-{i:03d}.jpg" for i in range(args.tasks)]
            for path in paths[width, height]:
                files[path] = make_jpeg(width, height, rng)

        token = secrets.token_hex(20)
        images = ImageServer(files, token, args.latency / 1000)
        images.start()
        stack.callback(images.stop)

        env = {k: v for k, v in base_env.items() if "BASIC_AUTH" not in k}  # no auth on the function
        for name in ("DEVICE", "FETCH_ALLOWED_HOSTS", "YOLO_IMAGE_SIZE", "THREADS", "LABEL_STUDIO_HOST", "LABEL_STUDIO_ACCESS_TOKEN"):
            env.pop(name, None)  # the function's defaults, whatever this shell sets
        run_dir = tmp / "run"
        run_dir.mkdir()
        env.update(
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="WARNING",
            MODEL_ROOT=str(tmp / "models"),
            MODEL_SCORE_THRESHOLD="0.25",
            MAX_CONCURRENT_PREDICTIONS="2",
            LABEL_STUDIO_URL=images.url,
            LABEL_STUDIO_API_KEY=token,
            YOLO_OFFLINE="1",
            YOLO_CONFIG_DIR=str(config_dir),
            IMAGE_CACHE_BYTES="0",  # both modes fetch every image on every run
            XDG_RUNTIME_DIR=str(run_dir),  # gunicorn's control socket
        )

        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)}; the function runs with DEVICE=auto)"
        else:
            device = "cpu (no CUDA GPU)"
        sizes = [f"{w}x{h}" for w, h in SIZES]
        print(f"YOLO batch prediction over loopback, Python {platform.python_version()}")
        print(f"  machine: {os.cpu_count()} CPUs ({_cpu_model()}), shared by the client, image server and function")
        print(f"  torch {torch.__version__}, ultralytics {ultralytics.__version__}, device: {device}")
        print("  model: yolov8n from ultralytics' yaml, untrained (random weights, full compute), predicting at the"
              " images' size (YOLO_IMAGE_SIZE=320 and 640: no upscaling of small images)")  # fmt: skip
        print(
            f"  images: {args.tasks} distinct JPEGs per size ({', '.join(sizes)}), served as /data/upload/... with a"
            f" Token header, {args.latency:g} ms added per request"
        )
        print("  function: `lsfn serve yolo`, MAX_CONCURRENT_PREDICTIONS=2, IMAGE_CACHE_BYTES=0 (every run fetches"
              " every image, checked by the image server's count)")  # fmt: skip
        print(
            f"  batched: 1 /predict with {args.tasks} tasks; sequential: {args.tasks} single-task /predict calls one"
            f" after another on one keep-alive connection; median of {args.repeat} runs, alternating which goes first"
        )
        print()
        sys.stdout.flush()

        header = f"{'image size':<11} {'tasks':>5} {'batched s':>10} {'sequential s':>13} {'ratio':>7}"
        print(header)
        print("-" * len(header))
        notes: list[str] = []
        for size in SIZES:
            # A function per size, inferring at the images' own size as a user of such images would.
            function = Function({**env, "YOLO_IMAGE_SIZE": str(max(size))}, tmp / f"function-{size[0]}.log")
            stack.callback(function.stop)
            function.start()
            function.wait_ready(300)
            # Answers checked before timing; this also runs the image shape through the model once.
            counted(images, run_batched, function.port, paths[size])
            counted(images, run_sequential, function.port, paths[size])
            batched: list[Run] = []
            sequential: list[Run] = []
            for round_ in range(args.repeat):
                modes = [(run_batched, batched), (run_sequential, sequential)]
                for mode, runs in modes if round_ % 2 == 0 else modes[::-1]:
                    runs.append(counted(images, mode, function.port, paths[size]))
            b = statistics.median(run.seconds for run in batched)
            s = statistics.median(run.seconds for run in sequential)
            print(f"{f'{size[0]}x{size[1]}':<11} {args.tasks:>5} {b:>10.3f} {s:>13.3f} {f'{s / b:.2f}x':>7}")
            sys.stdout.flush()
            median_b = sorted(batched, key=lambda run: run.seconds)[len(batched) // 2]
            median_s = sorted(sequential, key=lambda run: run.seconds)[len(sequential) // 2]
            notes.append(f"  {size[0]}x{size[1]} batched, Server-Timing (ms) of its median run: {median_b.timing}")
            notes.append(f"  {size[0]}x{size[1]} sequential, Server-Timing summed over its median run's {args.tasks}"
                         f" calls (ms): {_phases(median_s.phases)}")  # fmt: skip
            function.stop()
        print()
        print("\n".join(notes))

        # Cold start: fresh processes, one at a time, nothing else running.
        first = predict_body(paths[SIZES[-1]][:1])
        ready: list[float] = []
        answered: list[float] = []
        for index in range(args.repeat):
            cold = Function(env, tmp / f"cold-{index}.log")
            stack.callback(cold.stop)
            cold.start()
            ready.append(cold.wait_ready(300))
            conn = http.client.HTTPConnection(HOST, cold.port, timeout=PREDICT_TIMEOUT)
            try:
                post_predict(conn, first, 1)
            finally:
                conn.close()
            answered.append(time.perf_counter() - cold.started)
            cold.stop()
        w, h = SIZES[-1]
        print()
        print(
            f"cold start (median of {args.repeat} fresh processes, weights in the page cache): /health ready"
            f" {statistics.median(ready):.2f} s after process start, first prediction (1 task, {w}x{h}, image"
            f" fetched) answered {statistics.median(answered):.2f} s after process start"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
