"""Training on Cloud Run, run here: the front door and GPU service `lsfn deploy cloudrun yolo
--weights-store gs://...` generates and the training job `--train-job` generates, started as
their images start them with exactly the variables the requests set (secrets resolved from a
local Secret Manager), the bucket a local Cloud Storage server (tests/gcs.py), and Cloud Run's
Jobs API a local stand-in that runs an execution as the job's container would: its command
with the execution's overridden arguments and variables, as a process.

Label Studio's "Start Training" reaches the front door, which runs an execution; it trains on
the project's annotations, records the version in the bucket, and both services answer it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsfn.deploy.cloudrun import plan, plan_train_job
from lsfn.deploy.cloudrun_spec import DeploySpec
from tests import synthetic, yolo_models
from tests.gcs import BUCKET, gcs_emulator
from tests.label_studio import LabelStudioServer
from tests.platform import ScaleToZero
from tests.serving import Function, call
from tests.test_cloudrun_local import SECRETS, TOKEN, container_env
from tests.test_e2e import lsfn_connect, make_project, ml_backend, tasks_by_image
from tests.test_train import CONFIG, annotation

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ACCESS_TOKEN = "access-token-of-lsfn-front-door"


def job_env(step: Any, secrets: dict[str, dict[str, str]]) -> tuple[list[str], dict[str, str]]:
    """(command + args, variables) of the training job's container, secrets resolved."""
    (container,) = step.request["job"].template.template.containers
    env = {}
    for variable in container.env:
        ref = variable.value_source.secret_key_ref
        env[variable.name] = secrets[ref.secret][ref.version] if ref.secret else variable.value
    return [*container.command, *container.args], env


class JobsApi:
    """Cloud Run's `jobs.run` and `operations.get` for one job: an execution is its container's
    command run here, with the run's container overrides (arguments, variables). Requests
    without the front door's access token are refused, as IAM would."""

    def __init__(self, job: str, command: list[str], env: dict[str, str], tmp: Path) -> None:
        self.job, self.command, self.env, self.tmp = job, command, env, tmp
        self.executions: list[subprocess.Popen[bytes]] = []
        self.refused = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                    api.refused += 1
                    return self._answer(403, {"error": {"code": 403, "message": "run.jobs.runWithOverrides denied"}})
                if self.path != f"/v2/{api.job}:run":
                    return self._answer(404, {"error": {"code": 404, "message": f"no {self.path}"}})
                return self._answer(200, api.run(body.get("overrides") or {}))

            def do_GET(self) -> None:  # noqa: N802
                number = int(self.path.rsplit("/", 1)[1])
                process = api.executions[number]
                done = process.poll() is not None
                answer: dict[str, Any] = {"name": self.path.removeprefix("/v2/"), "done": done}
                if done and process.returncode != 0:
                    answer["error"] = {"code": 2, "message": f"the task exited with {process.returncode}"}
                self._answer(200, answer)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def run(self, overrides: dict[str, Any]) -> dict[str, Any]:
        (container,) = overrides.get("containerOverrides") or [{}]
        args = container.get("args") or self.command[1:]
        env = {**os.environ, **self.env, **{e["name"]: e["value"] for e in container.get("env", [])}}
        log = (self.tmp / f"execution-{len(self.executions)}.log").open("wb")
        # The image's `lsfn` is this checkout's, run by this Python.
        self.executions.append(subprocess.Popen([sys.executable, "-m", "lsfn.shared.cli", *args], env=env, cwd=self.tmp,
                                                stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        parent = self.job.split("/jobs/")[0]
        return {"name": f"{parent}/operations/{len(self.executions) - 1}", "done": False}

    def close(self) -> None:
        for process in self.executions:
            if process.poll() is None:
                process.kill()
        self.httpd.shutdown()


def tokens(tmp: Path) -> str:
    """A PYTHONPATH whose sitecustomize gives the front door its tokens (no metadata server here):
    the ID token the GPU service's stand-in checks, the access token the Jobs API's checks."""
    folder = tmp / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import lsfn.shared.runtime.id_token as _ids\n"
        f"_ids._fetch_from_google = lambda audience: {TOKEN!r}\n"
        "import lsfn.shared.runtime.cloudrun_jobs as _jobs\n"
        f"_jobs._access_token = lambda: {ACCESS_TOKEN!r}\n"
    )
    return os.pathsep.join([str(folder), str(ROOT)])


@pytest.fixture
def deployed(tmp_path: Path, label_studio_server: LabelStudioServer) -> Iterator[dict[str, Any]]:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(yolo_models.base_detector(), root / "shapes-base.pt")
    with gcs_emulator() as gcs:
        spec = DeploySpec(
            function="yolo", project="p", region="europe-west4", image="r/lsfn-yolo:v1-cu126", front_door_image="r/door:v1",
            label_studio_url=label_studio_server.url, basic_auth_user="annotators", weights_store=f"gs://{BUCKET}/cloudrun",
            secrets={"LABEL_STUDIO_API_KEY": "lsfn-label-studio-api-key", "BASIC_AUTH_PASS": "lsfn-pass:3"},
            env={"TRAIN_ARGS": "epochs=30,batch=8,lr0=0.004", "WEIGHTS_REFRESH": "1"},
        )  # fmt: skip
        local = {**yolo_models.offline_env(), "STORAGE_EMULATOR_HOST": gcs, "MODEL_ROOT": str(root)}
        command, env = job_env(plan_train_job(spec), SECRETS)
        jobs = JobsApi("projects/p/locations/europe-west4/jobs/lsfn-yolo-train", command, {**env, **local}, tmp_path)
        gpu_env = container_env(plan(spec)[0], SECRETS)
        gpu = ScaleToZero(gpu_env["LSFN_FUNCTION"], tmp_path / "gpu", {**gpu_env, **local}, root, idle=60.0, bearer=TOKEN)
        door_env = container_env(plan(spec, gpu_url=gpu.url)[2], SECRETS)
        door = Function(door_env["LSFN_FUNCTION"], tmp_path / "door", {**door_env, **local, "CLOUD_RUN_API": jobs.url,
                                                                       "PYTHONPATH": tokens(tmp_path)}, args=("--front-door",))  # fmt: skip
        try:
            yield {"door": door, "gpu": gpu, "jobs": jobs, "door_env": door_env}
        finally:
            door.close()
            gpu.close()
            jobs.close()


def test_start_training_runs_the_training_job_and_both_services_serve_its_version(
    label_studio_server: LabelStudioServer, deployed: dict[str, Any], tmp_path: Path
) -> None:
    label_studio, door, jobs = label_studio_server, deployed["door"], deployed["jobs"]
    assert deployed["door_env"]["TRAIN_JOB"] == "projects/p/locations/europe-west4/jobs/lsfn-yolo-train"
    rng = np.random.default_rng(5150)
    drawn = [synthetic.make_image(rng, (128, 128), (1, 3)) for _ in range(24)]
    project = make_project(label_studio, CONFIG, [pixels for pixels, _ in drawn])
    for index, task in tasks_by_image(label_studio, project).items():
        assert label_studio.api("POST", f"/api/tasks/{task['id']}/annotations", annotation(drawn[index][1], 128, 128)).status == 201
    connected = lsfn_connect(label_studio, project, door.url, "--basic-auth", "annotators:s3cret-pass")
    assert connected.returncode == 0, connected.stdout + connected.stderr

    pressed = label_studio.api("POST", f"/api/ml/{ml_backend(label_studio, project)['id']}/train", {})
    assert pressed.status == 200, pressed.data
    deadline = time.monotonic() + 60
    while not jobs.executions:
        assert time.monotonic() < deadline, door.log_path.read_text()[-3000:]
        time.sleep(0.5)
    assert jobs.refused == 0 and len(jobs.executions) == 1
    assert jobs.executions[0].wait(600) == 0, (tmp_path / "execution-0.log").read_text()[-4000:]

    basic = {"Authorization": "Basic " + base64.b64encode(b"annotators:s3cret-pass").decode()}
    deadline = time.monotonic() + 30
    while True:
        version = call("POST", f"{door.url}/setup", {"project": f"{project}.1", "schema": CONFIG}, headers=basic).json()["model_version"]
        if version.startswith(f"yolo-{project}-1@"):
            break
        assert time.monotonic() < deadline, f"the front door still answers {version}"
        time.sleep(0.5)
    body = {"tasks": [{"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(
        synthetic.png_bytes(drawn[0][0])).decode()}}], "label_config": CONFIG, "project": f"{project}.1"}  # fmt: skip
    answer = call("POST", f"{door.url}/predict", body, headers=basic).json()
    assert answer["results"][0]["model_version"] == version  # the GPU service serves it too
