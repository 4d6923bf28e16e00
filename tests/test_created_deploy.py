"""A function made by `lsfn create`, deployed as the built-in ones are: `lsfn deploy cloudrun|modal
FOLDER` names it after its folder and serves /app/function (where its Dockerfile and the Modal
image put it); the Cloud Run pair the deploy generates, run here with the folder standing in for
/app/function, answers a real Label Studio; its Modal app's GPU class and front door answer
/predict. (Its images are built and run in tests/test_container_images.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsfn.deploy.cloudrun import plan
from lsfn.deploy.cloudrun_spec import DeploySpec
from lsfn.deploy.create import create
from lsfn.deploy.function_ref import IMAGE_FUNCTION_DIR
from lsfn.deploy.modal_cli import load_app
from lsfn.deploy.modal_spec import ModalSpec
from lsfn.shared.settings import get_settings
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.platform import ScaleToZero
from tests.serving import Function, fixed_id_token
from tests.test_cloudrun_local import SECRETS, TOKEN, container_env
from tests.test_e2e import lsfn_connect, make_project, retrieve_predictions, stored, tasks_by_image
from tests.test_modal_deploy import data_uri

ROOT = Path(__file__).resolve().parent.parent
TARGET = f"{IMAGE_FUNCTION_DIR}/main.py:GlowSpotModel"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return create("glow_spot", "detect", tmp_path / "outside")


def lsfn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def square(width: int = 80, height: int = 60) -> np.ndarray:
    pixels = np.full((height, width, 3), 10, dtype=np.uint8)
    pixels[10:30, 40:70] = 240
    return pixels


def test_the_deploy_commands_take_a_created_functions_folder(folder: Path) -> None:
    cloudrun = lsfn("deploy", "cloudrun", "main.py:GlowSpotModel", "--project", "p", "--region", "europe-west4",
                    "--image", "r/glow:v1", "--front-door-image", "r/glow-fd:v1", "--allow-unauthenticated", "--dry-run",
                    cwd=folder)  # fmt: skip
    assert cloudrun.returncode == 0, cloudrun.stderr
    gpu, _, door = json.loads(cloudrun.stdout)
    assert gpu["request"]["service_id"] == "lsfn-glow-spot-gpu" and door["request"]["service_id"] == "lsfn-glow-spot"
    for step in (gpu, door):
        (container,) = step["request"]["service"]["template"]["containers"]
        assert {"name": "LSFN_FUNCTION", "value": TARGET} in container["env"]
    assert gpu["request"]["service"]["template"]["max_instance_request_concurrency"] == 1  # nothing known of its model

    modal = lsfn("deploy", "modal", str(folder), "--torch", "none", "--allow-unauthenticated", "--dry-run", cwd=folder.parent)
    assert modal.returncode == 0, modal.stderr
    config = json.loads(modal.stdout)
    assert config["app"] == "lsfn-glow-spot" and config["env"]["LSFN_FUNCTION"] == f"{IMAGE_FUNCTION_DIR}/main.py"
    steps = {step["step"]: step for step in config["image"]}
    assert {"local": str(folder), "remote": IMAGE_FUNCTION_DIR} in steps["add_local"]["files"]
    assert not any(step.get("packages", [""])[0].startswith("torch") for step in config["image"])  # --torch none
    assert f"if [ -f {IMAGE_FUNCTION_DIR}/requirements.txt ]; then pip install -r {IMAGE_FUNCTION_DIR}/requirements.txt; fi" \
        in steps["run_commands"]["commands"]

    refused = lsfn("deploy", "modal", "yolo", "--torch", "none", "--dry-run", cwd=folder)
    assert refused.returncode != 0 and "--torch" in refused.stderr
    missing = lsfn("deploy", "cloudrun", "no-such-folder", "--project", "p", "--region", "r", "--dry-run", cwd=folder)
    assert missing.returncode == 1 and "no function 'no-such-folder'" in missing.stderr and "lsfn create" in missing.stderr


def test_the_modal_app_of_a_created_function_answers(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ROOT", str(folder / "models"))
    get_settings.cache_clear()
    # The folder stands in for /app/function, where the image holds it.
    spec = ModalSpec(function="glow-spot", function_target=f"{folder / 'main.py'}", function_source=str(folder), torch="none")
    module = load_app(spec)
    gpu = module.Function()
    config = (folder / "README.md").read_text().split("```xml\n")[1].split("```")[0]
    body = {"tasks": [{"id": 1, "data": {"image": data_uri(square())}}], "label_config": config, "project": "1.1",
            "params": {"login": None, "password": None, "context": None}}  # fmt: skip
    status, data, _ = gpu.handle.local("POST", "/predict", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert status == 200, data
    (item,) = json.loads(data)["results"]
    (region,) = item["result"]
    assert item["model_version"] == "glow_spot-0.1" and region["value"]["x"] == pytest.approx(50.0)

    def handler(method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Any:
        return gpu.handle.local(method, path, body, headers)

    door = module.front_door_app(spec.target, handler).test_client()
    answer = door.post("/setup", json={"project": "1.1", "schema": config})
    assert answer.status_code == 200 and answer.json["model_version"] == "glow_spot-0.1"
    get_settings.cache_clear()


@pytest.fixture
def deployed(folder: Path, tmp_path: Path, label_studio_server: LabelStudioServer) -> Iterator[str]:
    spec = DeploySpec(
        function="glow-spot", function_target=TARGET, project="p", region="europe-west4", image="r/glow:v1",
        front_door_image="r/glow-fd:v1", label_studio_url=label_studio_server.url, basic_auth_user="annotators",
        secrets={"LABEL_STUDIO_API_KEY": "lsfn-label-studio-api-key", "BASIC_AUTH_PASS": "lsfn-pass:3"},
    )  # fmt: skip

    def here(env: dict[str, str]) -> str:  # the image's /app/function is the folder here
        return env["LSFN_FUNCTION"].replace(IMAGE_FUNCTION_DIR, str(folder))

    gpu_env = container_env(plan(spec)[0], SECRETS)
    gpu = ScaleToZero(here(gpu_env), tmp_path / "gpu", gpu_env, idle=30.0, bearer=TOKEN)
    door_env = container_env(plan(spec, gpu_url=gpu.url)[2], SECRETS)
    door = Function(here(door_env), tmp_path / "door", {**door_env, **fixed_id_token(tmp_path, TOKEN)}, args=("--front-door",))
    try:
        yield door.url
    finally:
        door.close()
        gpu.close()


@pytest.mark.e2e
def test_a_created_function_deployed_to_cloud_run_answers_label_studio(
    folder: Path, label_studio_server: LabelStudioServer, deployed: str
) -> None:
    assert SECRETS["lsfn-label-studio-api-key"]["latest"] == LEGACY_TOKEN
    config = (folder / "README.md").read_text().split("```xml\n")[1].split("```")[0]
    project = make_project(label_studio_server, config, [square()])
    connected = lsfn_connect(label_studio_server, project, deployed, "--basic-auth", "annotators:s3cret-pass")
    assert connected.returncode == 0, connected.stdout + connected.stderr
    retrieve_predictions(label_studio_server, project)
    (task,) = tasks_by_image(label_studio_server, project).values()
    (prediction,) = stored(label_studio_server, task)
    (region,) = prediction["result"]
    assert prediction["model_version"] == "glow_spot-0.1" and region["value"]["rectanglelabels"] == ["bright"]
    assert region["value"]["x"] == pytest.approx(50.0) and region["value"]["y"] == pytest.approx(100 * 10 / 60)
