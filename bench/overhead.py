"""Per-request overhead: the lsfn runtime against label-studio-ml-backend, measured in the same run.

    "$(scripts/venv)/bin/python" bench/overhead.py [--concurrency N] [--duration S] [--warmup S]
                                                   [--threads N] [--rounds N]

Serves a null model (no image fetching, no inference, one fixed box per task) twice over
loopback: through our runtime (`lsfn serve bench/null_function.py`: functions-framework on
gunicorn) and through HumanSignal's label-studio-ml-backend (its Flask app from `init_app`,
under gunicorn as its Dockerfile template runs it: `gunicorn --preload --workers 1 --threads
$THREADS --timeout 0`). Both get the same worker and thread counts. One load generator (N
keep-alive connections, one thread each) sends the same requests to both: GET /health, and
the batch /predict body Label Studio 1.23 sent for 1 and for 3 tasks. Prints requests/s, p50
and p99 latency per server and the ratios (above 1x: ours is faster).

The baseline runs from the repository's current source (not the stale `label-studio-ml` on
PyPI) in its own cached virtual environment, built on first use: its requirements with
label-studio-sdk 2.1.2 from PyPI in place of the git dependency, the same gunicorn version as
ours, and the source exported from the local mirror (--lsml-repo).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import free_port, start_group, stop_group, wait_healthy  # bench/, standard library only

# Only the standard library above: gunicorn imports this module in the baseline's environment
# (see lsml_app), where neither lsfn nor its dependencies are installed.

ROOT = Path(__file__).resolve().parents[1]
REQUEST = ROOT / "tests" / "data" / "ls-1.23" / "req-0013-POST-predict.json"
LSML_REPO = Path("/work/.mirror/HumanSignal+label-studio-ml-backend/repo")
SDK_PIN = "label-studio-sdk==2.1.2"
HOST = "127.0.0.1"

# The answer both null models give for every task; bench/null_function.py builds the same one
# with shared.results, and verify() checks the two servers agree.
FROM_NAME, TO_NAME, LABEL = "label", "image", "Cat"
SIZE = (640, 480)
BOX = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0}
SCORE = 0.5
MODEL_VERSION = "null-1"


# -- the baseline's null model (runs in the baseline's environment) ------------------------------


def lsml_app() -> Any:
    """label-studio-ml-backend's Flask app serving a null model; gunicorn calls this factory."""
    import logging

    from label_studio_ml.api import init_app
    from label_studio_ml.model import LabelStudioMLBase
    from label_studio_ml.response import ModelResponse
    from label_studio_sdk.label_interface.objects import PredictionValue

    # Its _wsgi.py template sets the root logger from LOG_LEVEL the same way.
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))

    class NullModel(LabelStudioMLBase):
        # Written to its cache once per project, not on every request as setup() would.
        INITIAL_MODEL_VERSION = MODEL_VERSION

        def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> ModelResponse:
            return ModelResponse(
                predictions=[PredictionValue(score=SCORE, result=[_baseline_region()]) for _ in tasks]
            )

    return init_app(model_class=NullModel)


def _baseline_region() -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "rectanglelabels",
        "original_width": SIZE[0],
        "original_height": SIZE[1],
        "image_rotation": 0,
        "value": {**BOX, "rotation": 0.0, "rectanglelabels": [LABEL]},
        "score": SCORE,
    }


# -- the baseline's environment ------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _quiet(argv: list[str], **kwargs: Any) -> None:
    """Run a build step; show its output only when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"overhead: failed ({done.returncode}): {' '.join(argv)}")


def baseline_venv(repo: Path) -> tuple[Path, str]:
    """The baseline's virtual environment (built once per source commit and pins) and its commit."""
    from importlib.metadata import version

    if not (repo / "HEAD").exists() and not (repo / ".git").exists():
        raise SystemExit(f"overhead: no label-studio-ml-backend git repository at {repo} (--lsml-repo)")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    # Its git dependency on label-studio-sdk cannot be fetched here: the PyPI release replaces it.
    requirements = [
        line.strip()
        for line in _git(repo, "show", "HEAD:requirements.txt").splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not line.lower().startswith("label-studio-sdk")
    ]
    # The same HTTP server as ours, so the comparison is of what runs inside it.
    requirements += [SDK_PIN, f"gunicorn=={version('gunicorn')}"]
    python = getattr(sys, "_base_executable", sys.executable)
    python_id = subprocess.run([python, "-VV"], check=True, capture_output=True, text=True).stdout
    key = hashlib.sha256("\n".join([commit, *requirements, python_id]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsfn"
    venv = cache / f"bench-lsml-{key}"
    if (venv / ".complete").exists():
        return venv, commit

    print(f"building the baseline's environment in {venv} (once per source commit)", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    _quiet([python, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _quiet([*pip, "install", *requirements])
    source = venv / "src"
    source.mkdir()
    # The package without its examples: a mirror may lack their large files, and serving needs none.
    files = [
        path
        for path in _git(repo, "ls-tree", "-r", "--name-only", "HEAD", "label_studio_ml").splitlines()
        if not path.startswith("label_studio_ml/examples/")
    ]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD", *files, "setup.py", "requirements.txt", "README.md"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    _quiet([*pip, "install", "--no-deps", str(source)])
    (venv / ".complete").touch()
    return venv, commit


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_group(self.argv, self.cwd, self.env, self.log)

    def wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        why = wait_healthy(self.process, self.port, timeout, HOST)
        if why is not None:
            self.fail(why)

    def fail(self, why: str) -> None:
        tail = self.log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"overhead: the {self.name} server {why}; its output:\n{tail}")

    def stop(self) -> None:
        stop_group(self.process)


def _server_env(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "BASIC_AUTH" not in k}  # both run without auth
    run_dir.mkdir()
    # gunicorn puts its control socket there: one each, not one shared path both would take over.
    env.update(PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING", XDG_RUNTIME_DIR=str(run_dir), **extra)
    return env


# -- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    body: bytes | None = None
    tasks: int = 0


@dataclass
class Measurement:
    latencies: list[float] = field(default_factory=list)  # seconds
    elapsed: float = 0.0
    errors: int = 0
    first_error: str = ""

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: int) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    def add(self, other: Measurement) -> None:
        self.latencies += other.latencies
        self.elapsed += other.elapsed
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


HEALTH = Scenario("GET /health", "GET", "/health")


def _headers(scenario: Scenario) -> dict[str, str]:
    return {"Content-Type": "application/json"} if scenario.body is not None else {}


def request(port: int, scenario: Scenario, timeout: float = 30) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(scenario.method, scenario.path, scenario.body, _headers(scenario))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def load(port: int, scenario: Scenario, concurrency: int, warmup: float, duration: float) -> Measurement:
    """Send ``scenario`` over ``concurrency`` keep-alive connections for warmup + duration seconds;
    latencies of the requests started after the warm-up."""
    headers = _headers(scenario)
    barrier = threading.Barrier(concurrency + 1)
    per_thread = [Measurement() for _ in range(concurrency)]
    last_ends = [0.0] * concurrency
    times: dict[str, float] = {}

    def worker(index: int) -> None:
        out = per_thread[index]
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        barrier.wait()
        measure_from, stop_at = times["measure_from"], times["stop_at"]
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= stop_at:
                break
            try:
                conn.request(scenario.method, scenario.path, scenario.body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status, out.first_error = 0, out.first_error or repr(exc)
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            ended = clock()
            if started < measure_from:
                continue
            if status == 200:
                out.latencies.append(ended - started)
                last_ends[index] = ended
            else:
                out.errors += 1
                out.first_error = out.first_error or f"HTTP {status}"
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    times["measure_from"] = now + warmup
    times["stop_at"] = now + warmup + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    total = Measurement()
    for m in per_thread:
        total.add(m)
    # Requests are counted from the end of the warm-up to the last answer of the window.
    total.elapsed = max(max(last_ends) - times["measure_from"], 1e-9)
    return total


# -- checks ---------------------------------------------------------------------------------------


def _normalised(body: bytes) -> Any:
    """A /predict answer without the random region ids, for comparing the two servers."""
    answer = json.loads(body)
    for item in answer.get("results", []):
        for region in item.get("result", []) if isinstance(item, dict) else []:
            region.pop("id", None)
    return answer


def verify(servers: list[Server], scenarios: list[Scenario]) -> None:
    """Fail loudly unless every server answers every scenario with 200 and one box per task,
    and the servers' /predict answers agree."""
    for scenario in scenarios:
        answers = []
        for server in servers:
            status, body = request(server.port, scenario)
            if status != 200:
                raise SystemExit(f"overhead: {server.name} answered {scenario.name} with {status}: {body[:500]!r}")
            if not scenario.tasks:
                continue
            answer = _normalised(body)
            items = answer.get("results")
            ok = isinstance(items, list) and len(items) == scenario.tasks
            ok = ok and all(
                isinstance(i, dict) and [r.get("type") for r in i.get("result", [])] == ["rectanglelabels"] for i in items
            )
            if not ok:
                raise SystemExit(
                    f"overhead: {server.name} did not answer one box for each of {scenario.tasks} tasks: {body[:1000]!r}"
                )
            answers.append((server.name, answer))
        if len(answers) == 2 and answers[0][1] != answers[1][1]:
            raise SystemExit(
                "overhead: the servers' answers differ:\n"
                + "\n".join(f"{name}: {json.dumps(answer, sort_keys=True)}" for name, answer in answers)
            )


# -- the run --------------------------------------------------------------------------------------


def _versions(python: str, packages: list[str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    out = subprocess.run([python, "-c", code, *packages], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _fmt(value: float, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4, help="keep-alive connections (default 4)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--threads", type=int, help="gunicorn threads of both servers (default concurrency + 8)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each cell, alternating which server goes first")
    parser.add_argument("--lsml-repo", type=Path, default=Path(os.environ.get("LSML_REPO", LSML_REPO)),
                        help="label-studio-ml-backend git repository (bare or not) to take the baseline from")  # fmt: skip
    args = parser.parse_args()
    threads = args.threads or args.concurrency + 8
    # A plain `kill` must still stop the servers (they run in their own sessions).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    venv, commit = baseline_venv(args.lsml_repo)
    body = json.loads(REQUEST.read_text())["body"]
    one = {**body, "tasks": body["tasks"][:1]}
    scenarios = [
        HEALTH,
        Scenario("POST /predict 1 task", "POST", "/predict", json.dumps(one).encode(), 1),
        Scenario(f"POST /predict {len(body['tasks'])} tasks", "POST", "/predict", json.dumps(body).encode(), len(body["tasks"])),
    ]

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lsfn-overhead-")))
        ours_port, lsml_port = free_port(), free_port()
        ours = Server(
            "lsfn",
            [sys.executable, "-m", "lsfn.shared.cli", "serve", "bench/null_function.py", "--port", str(ours_port), "--host", HOST],
            # Every connection may run a batch prediction at once (one slot more is kept for
            # interactive requests): the limit would answer 503 otherwise.
            _server_env(
                tmp / "lsfn-run", THREADS=str(threads), MAX_CONCURRENT_PREDICTIONS=str(args.concurrency + 1), MODEL_ROOT=str(tmp)
            ),
            ROOT,
            tmp / "lsfn.log",
            ours_port,
        )
        lsml = Server(
            "label-studio-ml-backend",
            [
                str(venv / "bin" / "gunicorn"), "--preload", "--bind", f"{HOST}:{lsml_port}", "--workers", "1",
                "--threads", str(threads), "--timeout", "0", "--chdir", str(ROOT / "bench"), "overhead:lsml_app()",
            ],  # fmt: skip
            # MODEL_DIR: where its per-project sqlite cache lives.
            _server_env(tmp / "lsml-run", THREADS=str(threads), WORKERS="1", MODEL_DIR=str(tmp / "lsml")),
            ROOT,
            tmp / "lsml.log",
            lsml_port,
        )
        servers = [ours, lsml]
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready(180)
        verify(servers, scenarios)

        ours_v = _versions(sys.executable, ["flask", "functions-framework", "gunicorn"])
        lsml_v = _versions(str(venv / "bin" / "python"), ["label-studio-ml", "flask", "gunicorn", "label-studio-sdk"])
        cores = os.cpu_count() or 1
        print(f"Null-model overhead over loopback, Python {platform.python_version()}")
        print(
            f"  machine: {cores} CPU cores, shared by the client and both servers: absolute numbers are low,"
            " compare the ratios"
        )
        print(
            f"  client: {args.concurrency} keep-alive connections (one thread each, http.client),"
            f" {args.warmup:g} s warm-up + {args.duration:g} s measured per cell, {args.rounds} round(s)"
        )
        print(f"  both servers: gunicorn, 1 worker, {threads} threads, LOG_LEVEL=WARNING")
        print(
            f"  lsfn: shared.runtime via `lsfn serve` (functions-framework {ours_v['functions-framework']},"
            f" Flask {ours_v['flask']}, gunicorn {ours_v['gunicorn']}), MAX_CONCURRENT_PREDICTIONS={args.concurrency + 1}"
        )
        print(
            f"  baseline: label-studio-ml-backend {lsml_v['label-studio-ml']} @ {commit[:10]} (init_app,"
            f" Flask {lsml_v['flask']}, gunicorn {lsml_v['gunicorn']} --preload, label-studio-sdk {lsml_v['label-studio-sdk']})"
        )
        print("  ratios above 1x mean lsfn is better: req/s lsfn/baseline, latency baseline/lsfn")
        print()
        header = f"{'scenario':<22} {'server':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        print(header)
        print("-" * len(header))
        errors = []
        for scenario in scenarios:
            results = {server.name: Measurement() for server in servers}
            for round_ in range(args.rounds):
                order = servers if round_ % 2 == 0 else servers[::-1]
                for server in order:
                    results[server.name].add(load(server.port, scenario, args.concurrency, args.warmup, args.duration))
            for server in servers:
                m = results[server.name]
                if m.errors:
                    errors.append(f"{server.name} {scenario.name}: {m.errors} failed requests, first: {m.first_error}")
                print(
                    f"{scenario.name:<22} {server.name:<24} {_fmt(m.rps, 9, 1)} {_fmt(m.percentile_ms(50), 8, 2)}"
                    f" {_fmt(m.percentile_ms(99), 8, 2)}"
                )
            a, b = results[ours.name], results[lsml.name]
            print(
                f"{'':<22} {'ratio':<24} {_ratio(a.rps, b.rps):>9} {_ratio(b.percentile_ms(50), a.percentile_ms(50)):>8}"
                f" {_ratio(b.percentile_ms(99), a.percentile_ms(99)):>8}"
            )
            sys.stdout.flush()
        if errors:
            print("\n".join(["", "FAILED requests during timing:", *errors]), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
