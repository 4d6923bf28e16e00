"""`lsfn prelabel` against a real Label Studio: every selected task gets exactly one prediction of
the function's model version, a second or interrupted run continues where the last stopped, a
broken image is reported while the others are stored, --view/--only-unlabeled/--tasks choose the
tasks, --prompt reaches a grounding function, Cloud Run Job tasks split the project without
overlap, and Modal's fan-out (through a local stand-in for ``.map``) stores the same."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from lsfn.shared.label_studio import LabelStudio
from lsfn.deploy.prelabel import Options, Progress, Summary, parse_task_ids, prelabel
from lsfn.deploy.prelabel_cli import shard_from
from lsfn.deploy.prelabel_targets import MapTarget
from tests import configs, yolo_models
from tests.dino_models import write_model
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.serving import Function
from tests.test_e2e import make_project
from tests.test_yolo_http import RECT, held_out

ROOT = Path(__file__).resolve().parent.parent
BROKEN = "data:image/png;base64,bm90IGFuIGltYWdl"  # "not an image"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prelabel-weights")
    shutil.copyfile(yolo_models.detector(), root / "shapes-det.pt")
    write_model(root / "grounding-dino-tiny")
    return root


def function_env(label_studio: LabelStudioServer, weights: Path) -> dict[str, str]:
    return {**yolo_models.offline_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
            "MODEL_ROOT": str(weights), "LOG_LEVEL": "WARNING"}  # fmt: skip


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory, label_studio_server: LabelStudioServer, weights: Path) -> Iterator[Function]:
    env = {**function_env(label_studio_server, weights), "BASIC_AUTH_USER": "annotators", "BASIC_AUTH_PASS": "pw"}
    fn = Function("yolo", tmp_path_factory.mktemp("prelabel-yolo"), env, weights)
    fn.wait_ready()
    yield fn
    fn.close()


def lsfn_prelabel(label_studio: LabelStudioServer, project: int, target: str, *args: str, weights: Path | None = None,
                  env: dict[str, str] | None = None, background: bool = False) -> Any:  # fmt: skip
    command = [sys.executable, "-m", "lsfn.shared.cli", "prelabel", target, "--project", str(project),
               "--label-studio", label_studio.url, "--token", LEGACY_TOKEN, *args]  # fmt: skip
    full = {**os.environ, **(function_env(label_studio, weights) if weights else {}), **(env or {})}
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)


def predictions(label_studio: LabelStudioServer, project: int) -> list[dict[str, Any]]:
    return label_studio.api("GET", f"/api/predictions?project={project}").json()


def task_ids(label_studio: LabelStudioServer, project: int) -> list[int]:
    return sorted(t["id"] for t in LabelStudio(label_studio.url, LEGACY_TOKEN).tasks(project))


def image_project(label_studio: LabelStudioServer, count: int, seed: int, config: str = RECT) -> int:
    return make_project(label_studio, config, [pixels for pixels, _ in held_out(count, (96, 72), seed=seed, shapes=1)])


# -- the command, against a function over HTTP ------------------------------------------------


@pytest.mark.e2e
def test_every_task_is_predicted_once_and_a_broken_image_is_reported(label_studio_server: LabelStudioServer, yolo: Function) -> None:
    label_studio = label_studio_server
    project = image_project(label_studio, 12, seed=1701)
    answer = label_studio.api("POST", f"/api/projects/{project}/import", [{"data": {"image": BROKEN}}])
    assert answer.status == 201, answer.data
    broken = max(task_ids(label_studio, project))
    basic = ("--basic-auth", "annotators:pw")

    first = lsfn_prelabel(label_studio, project, yolo.url, *basic, "--batch-size", "4", "--concurrency", "2")
    assert first.returncode == 1, first.stdout + first.stderr  # one task failed
    assert f"task {broken} failed: unreadable image" in first.stderr
    assert "13 tasks selected: 12 predicted (12 predictions stored), 1 failed, 0 skipped" in first.stdout
    stored = predictions(label_studio, project)
    per_task = Counter(p["task"] for p in stored)
    assert set(per_task) == set(task_ids(label_studio, project)) - {broken} and set(per_task.values()) == {1}
    assert {p["model_version"] for p in stored} == {yolo_version(stored)} and yolo_version(stored).startswith("yolo-")
    assert sum(1 for p in stored if p["result"]) >= 10  # the detector finds the shapes

    again = lsfn_prelabel(label_studio, project, yolo.url, *basic)
    assert "12 already hold a prediction" in again.stderr and "1 to predict" in again.stderr
    assert Counter(p["task"] for p in predictions(label_studio, project)) == per_task  # nothing predicted twice

    refused = lsfn_prelabel(label_studio, project, yolo.url)  # no Basic auth
    assert refused.returncode == 2 and "401" in refused.stderr and "Traceback" not in refused.stderr


def yolo_version(stored: list[dict[str, Any]]) -> str:
    return stored[0]["model_version"]


@pytest.mark.e2e
def test_view_only_unlabeled_and_tasks_choose_the_tasks(label_studio_server: LabelStudioServer, yolo: Function) -> None:
    label_studio = label_studio_server
    project = image_project(label_studio, 6, seed=1702)
    ids = task_ids(label_studio, project)
    view = {"project": project, "data": {"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:id", "operator": "less_or_equal", "type": "Number", "value": ids[3]}]}}}  # fmt: skip
    answer = label_studio.api("POST", "/api/dm/views", view)
    assert answer.status == 201, answer.data
    assert label_studio.api("POST", f"/api/tasks/{ids[1]}/annotations", {"result": [], "was_cancelled": False}).status == 201
    basic = ("--basic-auth", "annotators:pw")

    done = lsfn_prelabel(label_studio, project, yolo.url, *basic, "--view", str(answer.json()["id"]), "--only-unlabeled")
    assert done.returncode == 0, done.stderr
    assert sorted(p["task"] for p in predictions(label_studio, project)) == [ids[0], ids[2], ids[3]]
    done = lsfn_prelabel(label_studio, project, yolo.url, *basic, "--tasks", f"{ids[4]}-{ids[5]},{ids[0]}")
    assert done.returncode == 0 and "3 tasks selected" in done.stderr and "1 already hold" in done.stderr
    assert sorted(p["task"] for p in predictions(label_studio, project)) == [ids[0], ids[2], ids[3], ids[4], ids[5]]


# -- in-process: local:FUNCTION, interrupted, a prompt, Cloud Run Job tasks ----------------------


@pytest.mark.e2e
def test_an_interrupted_run_continues_where_it_stopped(label_studio_server: LabelStudioServer, weights: Path) -> None:
    label_studio = label_studio_server
    project = image_project(label_studio, 30, seed=1703)
    run = lsfn_prelabel(label_studio, project, "local:yolo", "--batch-size", "1", "--concurrency", "1", weights=weights,
                        background=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(predictions(label_studio, project)) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)  # no chance to tidy up
    run.communicate()
    before = len(predictions(label_studio, project))
    assert 3 <= before < 30

    rest = lsfn_prelabel(label_studio, project, "local:yolo", "--batch-size", "4", weights=weights)
    assert rest.returncode == 0, rest.stderr
    assert f"{before} already hold a prediction" in rest.stderr
    per_task = Counter(p["task"] for p in predictions(label_studio, project))
    assert set(per_task) == set(task_ids(label_studio, project)) and set(per_task.values()) == {1}


@pytest.mark.e2e
def test_a_prompt_reaches_a_grounding_function(label_studio_server: LabelStudioServer, weights: Path) -> None:
    label_studio = label_studio_server
    project = image_project(label_studio, 3, seed=1704, config=configs.TEXT_PROMPT_BOXES)
    done = lsfn_prelabel(label_studio, project, "local:grounding_dino", "--prompt", "house", weights=weights)
    assert done.returncode == 0, done.stderr
    regions = [r for p in predictions(label_studio, project) for r in p["result"]]
    assert regions and {r["value"]["rectanglelabels"][0] for r in regions} == {"house"}  # typed: only what was asked
    plain = image_project(label_studio, 3, seed=1704, config=configs.TEXT_PROMPT_BOXES)
    assert lsfn_prelabel(label_studio, plain, "local:grounding_dino", weights=weights).returncode == 0
    labels = {r["value"]["rectanglelabels"][0] for p in predictions(label_studio, plain) for r in p["result"]}
    assert labels - {"house"}  # without a prompt the project's labels are the prompt


@pytest.mark.e2e
def test_cloud_run_job_tasks_split_the_project_without_overlap(label_studio_server: LabelStudioServer, weights: Path) -> None:
    label_studio = label_studio_server
    project = image_project(label_studio, 15, seed=1705)
    workers = [lsfn_prelabel(label_studio, project, "local:yolo", weights=weights, background=True,
                             env={"CLOUD_RUN_TASK_INDEX": str(i), "CLOUD_RUN_TASK_COUNT": "3"}) for i in range(3)]  # fmt: skip
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    selected = [int(out.split(" tasks selected")[0].rsplit(" ", 1)[-1]) for out, _ in outputs]
    assert sum(selected) == 15 and all(selected)
    per_task = Counter(p["task"] for p in predictions(label_studio, project))
    assert set(per_task) == set(task_ids(label_studio, project)) and set(per_task.values()) == {1}


class LocalMap:
    """A stand-in for Modal's handle of the GPU class: ``remote`` and ``map`` with the same
    arguments, backed by the function's Runtime in this process; outputs in the order they
    finish, exceptions returned in place (Modal's ``return_exceptions=True``). ``busy`` batches
    answer 503 the first time, ``crash`` batches raise."""

    def __init__(self, runtime: Any, busy: set[str], crash: set[str]) -> None:
        self.runtime, self.busy, self.crash = runtime, set(busy), set(crash)
        self.calls: list[str] = []

    def remote(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        key = headers.get("X-Request-Id", "")
        self.calls.append(key)
        if key in self.crash:
            raise RuntimeError("the container was lost")
        if key in self.busy:
            self.busy.discard(key)
            return 503, b'{"error":"busy"}', {"Retry-After": "0", "X-Request-Id": key}
        return self.runtime.call(method, path, body, headers)

    def map(self, *iterables: Any, order_outputs: bool = True, return_exceptions: bool = False) -> Iterator[Any]:
        assert order_outputs is False and return_exceptions is True  # how prelabel fans out
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(self.remote, *args) for args in zip(*iterables)]
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # noqa: BLE001
                    yield exc


@pytest.mark.e2e
def test_modal_fan_out_through_a_stand_in_for_map(label_studio_server: LabelStudioServer, weights: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from lsfn.shared.cli import function_runtime
    from lsfn.shared.settings import get_settings

    for key, value in function_env(label_studio_server, weights).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    project = image_project(label_studio_server, 10, seed=1706)
    runtime = function_runtime("yolo")
    runtime.start()
    handle = LocalMap(runtime, busy={f"prelabel-{project}-0-1"}, crash={f"prelabel-{project}-0-3"})
    ls = LabelStudio(label_studio_server.url, LEGACY_TOKEN)
    summary = prelabel(ls, MapTarget(handle, "modal:yolo"), Options(project=project, batch_size=2), out=io.StringIO())
    get_settings.cache_clear()
    assert (summary.selected, summary.done, summary.failed) == (10, 8, 2)
    assert all("the container was lost" in reason for _, reason in summary.failures)
    assert handle.calls.count(f"prelabel-{project}-0-1") == 2  # busy, then answered
    per_task = Counter(p["task"] for p in predictions(label_studio_server, project))
    assert len(per_task) == 8 and set(per_task.values()) == {1}


# -- pieces ----------------------------------------------------------------------------------


def test_task_ids_and_shards_are_parsed() -> None:
    assert parse_task_ids("1-3, 7 ,10-10") == {1, 2, 3, 7, 10}
    with pytest.raises(ValueError, match="backwards"):
        parse_task_ids("5-2")
    with pytest.raises(ValueError, match="not a task id"):
        parse_task_ids("1,x")
    assert shard_from("2/3") == (2, 3)
    with pytest.raises(ValueError):
        shard_from("3/3")


def test_progress_without_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    summary = Summary(done=3, failed=1, skipped=2)
    progress = Progress(8, summary, out)
    progress.close()
    line = out.getvalue()
    assert line.startswith("lsfn prelabel: [############............] 4/8 done 3 failed 1 skipped 2 ")
    assert "tasks/s ETA " in line and "\r" not in line


def lsfn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_cloud_run_job_and_its_execution_as_dry_runs() -> None:
    deploy = lsfn("deploy", "cloudrun", "grounding_sam", "--project", "p", "--region", "europe-west4", "--job", "--workers", "3",
                  "--label-studio-url", "https://ls.example.com", "--secret", "LABEL_STUDIO_API_KEY=lsfn-key",
                  "--secret", "BASIC_AUTH_PASS=lsfn-pass", "--dry-run")  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr
    (step,) = json.loads(deploy.stdout)
    assert step["method"] == "create_or_update_job" and step["request"]["job_id"] == "lsfn-grounding-sam-prelabel"
    execution = step["request"]["job"]["template"]
    assert (execution["task_count"], execution["parallelism"]) == (3, 3)
    task = execution["template"]
    (container,) = task["containers"]
    assert container["command"] == ["lsfn", "prelabel"] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert task["node_selector"] == {"accelerator": "nvidia-l4"} and task["max_retries"] == 1
    env = {e["name"]: e for e in container["env"]}
    assert env["LSFN_FUNCTION"]["value"] == "grounding_sam" and env["LABEL_STUDIO_URL"]["value"] == "https://ls.example.com"
    assert env["LABEL_STUDIO_API_KEY"]["value_source"]["secret_key_ref"] == {"secret": "lsfn-key", "version": "latest"}
    assert "BASIC_AUTH_PASS" not in env  # the job serves nobody

    run = lsfn("prelabel", "cloudrun-job:grounding_sam", "--project", "3", "--prompt", "football player", "--only-unlabeled",
               "--gcp-project", "p", "--region", "europe-west4", "--workers", "8", "--dry-run")  # fmt: skip
    assert run.returncode == 0, run.stderr
    request = json.loads(run.stdout)
    assert request["name"] == "projects/p/locations/europe-west4/jobs/lsfn-grounding-sam-prelabel"
    assert request["overrides"]["task_count"] == 8
    (override,) = request["overrides"]["container_overrides"]
    assert override["args"][:3] == ["local:grounding_sam", "--project", "3"]
    assert "--only-unlabeled" in override["args"] and override["args"][-2:] == ["--prompt", "football player"]


def test_following_an_execution_counts_the_predictions_stored() -> None:
    from lsfn.deploy.prelabel_job import follow

    class Operation:
        polls = 0

        def done(self) -> bool:
            self.polls += 1
            return self.polls > 3

        def result(self) -> Any:
            return type("Execution", (), {"name": "e-1", "succeeded_count": 2, "failed_count": 1})()

    stored = iter([100, 104, 110, 118, 120, 120])
    out = io.StringIO()
    assert follow(Operation(), lambda: next(stored), out, every=0.0) == 1  # a task failed
    lines = out.getvalue().splitlines()
    assert [line.split(" predictions")[0] for line in lines[:3]] == ["lsfn prelabel: 4", "lsfn prelabel: 10", "lsfn prelabel: 18"]
    assert lines[-1] == "lsfn prelabel: execution e-1 ended: 2 tasks succeeded, 1 failed, 0 cancelled, 20 predictions stored"

    class Ended(Operation):
        def __init__(self, outcome: Any) -> None:
            self.outcome = outcome

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return self.outcome

    fields = {"name": "e-2", "succeeded_count": 3, "failed_count": 0, "cancelled_count": 0, "task_count": 3}
    assert follow(Ended(type("Execution", (), fields)()), None, io.StringIO()) == 0
    cancelled = {**fields, "succeeded_count": 1, "cancelled_count": 2}
    assert follow(Ended(type("Execution", (), cancelled)()), None, io.StringIO()) == 1  # cancelled is not done
    out = io.StringIO()
    assert follow(Ended(RuntimeError("Task prelabel-0 failed")), None, out) == 1
    assert out.getvalue() == "lsfn prelabel: the execution failed: Task prelabel-0 failed\n"


def test_a_busy_or_unreachable_function_is_tried_again() -> None:
    from lsfn.deploy.prelabel_targets import send_retrying

    answers: list[Any] = [ConnectionRefusedError("refused"), (503, b'{"error":"model is loading"}', {"Retry-After": "0"}),
                          (429, b"{}", {"retry-after": "0.1"}), (200, b'{"results":[]}', {})]  # fmt: skip
    sent: list[tuple[str, str]] = []

    def send(path: str, body: bytes, key: str) -> Any:
        sent.append((path, key))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert send_retrying(send, "/predict", b"{}", "b-1")[0] == 200 and len(sent) == 4
    # Past the time given, the last busy answer is final (its batch fails), not a retry forever.
    busy = lambda path, body, key: (503, b'{"error":"busy"}', {"Retry-After": "5"})  # noqa: E731
    started = time.monotonic()
    assert send_retrying(busy, "/predict", b"{}", "b-2", retry_for=1.0)[0] == 503 and time.monotonic() - started < 2
    # Any other answer is final at once.
    assert send_retrying(lambda *a: (422, b"{}", {}), "/predict", b"{}", "b-3")[0] == 422


class Stamped:
    """A target answering each task with a prediction whose control is the task's own choice:
    ``bad`` tasks name a control the label config does not have (Label Studio leaves those out
    of a bulk import, saying only how many it stored)."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def setup(self, body: bytes) -> str:
        return "stamped-1"

    def run(self, batches: Any) -> Iterator[tuple[Any, Any]]:
        for batch in batches:
            yield batch, [{"result": [{"from_name": "nowhere" if t["id"] in self.bad else "label", "to_name": "image",
                                       "type": "rectanglelabels", "original_width": 96, "original_height": 72,
                                       "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0,
                                                 "rectanglelabels": ["Box"]}}]} for t in batch.tasks]  # fmt: skip


@pytest.mark.e2e
def test_predictions_label_studio_leaves_out_are_failures(label_studio_server: LabelStudioServer) -> None:
    project = image_project(label_studio_server, 4, seed=1707)
    ids = task_ids(label_studio_server, project)
    ls = LabelStudio(label_studio_server.url, LEGACY_TOKEN)
    summary = prelabel(ls, Stamped({ids[1]}), Options(project=project, batch_size=4), out=io.StringIO())
    stored_tasks = {p["task"] for p in predictions(label_studio_server, project)}
    assert (summary.done, summary.failed) == (3, 1) and summary.failures[0][0] == ids[1]
    assert "did not store its prediction" in summary.failures[0][1] and stored_tasks == set(ids) - {ids[1]}


def test_dry_run_goes_with_cloud_run_jobs_only() -> None:
    done = lsfn("prelabel", "http://127.0.0.1:9", "--project", "1", "--label-studio", "http://127.0.0.1:9", "--token", "t",
                "--dry-run")  # fmt: skip
    assert done.returncode == 2 and "cloudrun-job" in done.stderr and "Traceback" not in done.stderr
    job = lsfn("deploy", "cloudrun", "yolo", "--project", "p", "--region", "europe-west4", "--job", "--dry-run")
    assert job.returncode == 1 and "--label-studio-url and the API key" in job.stderr
