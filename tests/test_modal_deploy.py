"""`lsfn deploy modal`: the app module for every function imported with no credentials and no
network, its dry run, its refusal without credentials, the GPU class run with Modal's
``.local()`` against `lsfn serve` on the same Label Studio bodies, and the front door served
with its upstream bound to that ``.local()`` call, driven by a real Label Studio."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import numpy as np
import pytest

from lsfn.deploy.cloudrun_spec import FUNCTIONS
from lsfn.deploy.modal_cli import credentials, load_app
from lsfn.deploy.modal_spec import ModalSpec
from lsfn.shared.settings import get_settings
from tests import sam2_models, synthetic, yolo_models
from tests.conftest import MODAL_CONFIG
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.servers import free_port, stop_group
from tests.serving import Function, call, network_attempts, network_guard, wait_listening
from tests.test_cloudrun_local import assert_click_boxed
from tests.test_e2e import lsfn_connect, make_project, retrieve_predictions, stored, tasks_by_image
from tests.test_yolo_http import RECT, held_out

ROOT = Path(__file__).resolve().parent.parent


def lsfn(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


# -- the app module and the command, without Modal --------------------------------------------


IMPORT_CHECK = """
import json, sys
from lsfn.deploy.modal_cli import load_app
from lsfn.deploy.modal_spec import ModalSpec
module = load_app(ModalSpec(function=sys.argv[1], secrets=["lsfn-secrets"]))
print(json.dumps({"app": module.app.name, "class": type(module.Function).__name__,
                  "methods": sorted(module.Function._get_partial_functions()),
                  "front_door": type(module.front_door).__name__, "spec": module.SPEC.function}))
"""


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_app_module_imports_without_credentials_or_network(function: str, tmp_path: Path) -> None:
    guard = network_guard(tmp_path)
    env = {**guard, "PYTHONPATH": f"{guard['PYTHONPATH']}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK, function], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found == {"app": f"lsfn-{function.replace('_', '-')}", "class": "Cls", "methods": ["handle", "set_up", "start"],
                     "front_door": "Function", "spec": function}  # fmt: skip
    assert network_attempts(tmp_path) == ""


def test_dry_run_prints_the_app_configuration() -> None:
    done = lsfn("deploy", "modal", "sam2", "--dry-run", "--gpu", "L4,A10", "--gpu-snapshot", "--secret", "ls-api",
                "--secret", "ls-auth", "--max-containers", "5", "--scaledown-window", "120", "--env", "LOG_LEVEL=DEBUG",
                "--model-size", "small", env={"LABEL_STUDIO_API_KEY": "a-key-not-to-print", "BASIC_AUTH_PASS": "pass-not-to-print"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "not-to-print" not in done.stdout + done.stderr
    config = json.loads(done.stdout)
    gpu = config["gpu_class"]
    assert config["app"] == "lsfn-sam2" and config["lsfn_version"]
    assert gpu["gpu"] == ["L4", "A10"] and gpu["enable_memory_snapshot"] is True
    assert gpu["experimental_options"] == {"enable_gpu_snapshot": True} and "on the GPU" in gpu["loads"]
    assert gpu["secrets"] == ["ls-api", "ls-auth"] and config["front_door"]["secrets"] == ["ls-api", "ls-auth"]
    assert (gpu["min_containers"], gpu["max_containers"], gpu["scaledown_window"]) == (0, 5, 120)
    assert gpu["concurrent_inputs"] == FUNCTIONS["sam2"].concurrency
    door = config["front_door"]
    assert door["min_containers"] == 1 and door["requires_proxy_auth"] is False and door["web_endpoint"] == "wsgi_app"
    assert config["env"] == {"LSFN_FUNCTION": "sam2", "MODEL_SIZE": "small", "LOG_LEVEL": "DEBUG"}
    steps = {step["step"]: step for step in config["image"]}
    assert steps["pip_install"]["packages"] == ["torch==2.14.1+cu126", "torchvision==0.29.1+cu126"]
    assert steps["pip_install"]["index_url"] == "https://download.pytorch.org/whl/cu126"
    commands = " ; ".join(steps["run_commands"]["commands"])
    assert "check-torch cu126" in commands and "install-function sam2" in commands and "--size small" in commands
    assert "--manifest /app/models/weights-manifest.json" in commands

    # Defaults: no GPU snapshot (alpha), one GPU type, the CPU path.
    plain = json.loads(lsfn("deploy", "modal", "yolo", "--dry-run").stdout)
    assert plain["gpu_class"]["gpu"] == "L4" and plain["gpu_class"]["experimental_options"] == {}
    assert "moved to the GPU after restore" in plain["gpu_class"]["loads"]
    assert plain["gpu_class"]["concurrent_inputs"] == FUNCTIONS["yolo"].concurrency


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--gpu", "L5"), "not a Modal GPU type"),
        (("--min-containers", "4", "--max-containers", "2"), "--min-containers"),
        (("--scaledown-window", "1"), "--scaledown-window"),
        (("--env", "LABEL_STUDIO_API_KEY=x"), "must come from a Modal secret"),
        (("--env", "MODEL_SIZE=tiny"), "set by the image"),  # the weights baked follow --model-size
    ],
)
def test_a_deploy_that_cannot_work_is_refused_in_one_sentence(args: tuple[str, ...], problem: str) -> None:
    done = lsfn("deploy", "modal", "yolo", "--dry-run", *args)
    assert done.returncode == 1 and problem in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_train_adds_a_gpu_train_function_and_a_volume_store() -> None:
    done = lsfn("deploy", "modal", "yolo", "--dry-run", "--secret", "lsfn", "--train", "--gpu", "L4,A10")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    train = config["train_function"]
    assert train["name"] == "train" and train["gpu"] == ["L4", "A10"] and train["timeout"] == 6 * 3600
    assert train["secrets"] == ["lsfn"] and train["min_containers"] == 0
    assert config["env"]["WEIGHTS_STORE"] == train["weights_store"] == "modal-volume://lsfn-yolo-weights"
    assert json.loads(lsfn("deploy", "modal", "yolo", "--dry-run", "--secret", "lsfn").stdout)["train_function"] is None
    refused = lsfn("deploy", "modal", "sam2", "--dry-run", "--secret", "lsfn", "--train")
    assert refused.returncode == 1 and "sam2 does not train" in refused.stderr
    module = load_app(ModalSpec(function="yolo", secrets=["lsfn"], train=True))
    assert type(module.train).__name__ == "Function" and module.SPEC.volume == "lsfn-yolo-weights"


def test_an_open_front_door_is_a_warning_in_a_dry_run_and_refused_in_a_deploy() -> None:
    dry = lsfn("deploy", "modal", "yolo", "--dry-run")
    assert dry.returncode == 0 and "warning: without --secret the front door has no Basic auth" in dry.stderr
    done = lsfn("deploy", "modal", "yolo")
    assert done.returncode == 1 and "without --secret" in done.stderr and "Traceback" not in done.stderr
    assert lsfn("deploy", "modal", "yolo", "--dry-run", "--allow-unauthenticated").stderr == ""


def test_tests_run_without_modal_credentials() -> None:
    """A token in CI would make the deploy tests try Modal (and hang a minute each)."""
    assert not [name for name in os.environ if name.startswith("MODAL_TOKEN")]
    assert os.environ["MODAL_CONFIG_PATH"] == MODAL_CONFIG and not os.path.exists(MODAL_CONFIG)
    assert credentials() is False


def test_a_deploy_without_credentials_says_so(tmp_path: Path) -> None:
    started = time.monotonic()
    done = lsfn("deploy", "modal", "yolo", "--secret", "lsfn", env=network_guard(tmp_path), timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "lsfn: no Modal credentials: run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), "
        "or use --dry-run to see what would be deployed"
    ]
    assert time.monotonic() - started < 30 and network_attempts(tmp_path) == ""


# -- the GPU class with .local(), against `lsfn serve` --------------------------------------------


def data_uri(pixels: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(synthetic.png_bytes(pixels)).decode()


def comparable(answer: Any) -> Any:
    """An answer without its regions' ids (random per answer) and with floats to 4 decimals: two
    processes on the CPU (other thread counts) differ in the 7th digit of a score."""
    if isinstance(answer, dict):
        return {key: comparable(value) for key, value in answer.items() if key != "id"}
    if isinstance(answer, list):
        return [comparable(value) for value in answer]
    return round(answer, 4) if isinstance(answer, float) else answer


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """This process's settings as a Modal container's: MODEL_ROOT, offline ultralytics, and Basic
    auth (which the GPU class must not ask its front door for)."""
    root = tmp_path / "models"
    root.mkdir()
    for key, value in {**yolo_models.offline_env(), "MODEL_ROOT": str(root), "BASIC_AUTH_USER": "annotators",
                       "BASIC_AUTH_PASS": "pw", "LOG_LEVEL": "WARNING"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


YOLO_TASKS = [(data_uri(pixels), 11 + i) for i, (pixels, _) in enumerate(held_out(2, (160, 120), seed=1601))]


def yolo_body() -> dict[str, Any]:
    tasks = [{"id": task_id, "data": {"image": uri}} for uri, task_id in YOLO_TASKS]
    tasks.append({"id": 13, "data": {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}})  # "not an image"
    return {"tasks": tasks, "label_config": RECT, "project": "3.1700000000", "params": {"login": None, "password": None, "context": None}}


def sam2_body(uri: str) -> dict[str, Any]:
    # An interactive click as Label Studio 1.23 sends it (PROTOCOL.md §3.3).
    context = {"result": [{"original_width": 96, "original_height": 80, "image_rotation": 0,
                           "value": {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["object"]},
                           "is_positive": True, "id": "k1", "from_name": "kp", "to_name": "image",
                           "type": "keypointlabels", "origin": "manual"}]}  # fmt: skip
    config = ("<View><Image name='image' value='$image'/><KeyPointLabels name='kp' toName='image' smart='true'>"
              "<Label value='object'/></KeyPointLabels><BrushLabels name='mask' toName='image'><Label value='object'/>"
              "</BrushLabels></View>")  # fmt: skip
    return {"tasks": [{"id": 21, "data": {"image": uri}}], "label_config": config, "project": "4.1700000000",
            "params": {"login": None, "password": None, "context": context}}  # fmt: skip


def answers(function: str, body: dict[str, Any], root: Path, tmp_path: Path, **env: str) -> tuple[tuple[int, dict], tuple[int, dict]]:
    """(the GPU class's .local() answer, `lsfn serve`'s answer, with the same settings and Basic
    auth) to the same /predict body."""
    gpu = load_app(ModalSpec(function=function)).Function()
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Request-Id": "same-request"}
    status, data, answered = gpu.handle.local("POST", "/predict", raw, headers)
    assert answered["Content-Type"] == "application/json" and "Server-Timing" in answered
    auth = {"BASIC_AUTH_USER": "annotators", "BASIC_AUTH_PASS": "pw"}
    served = Function(function, tmp_path / "serve", {**yolo_models.offline_env(), **auth, **env}, root)
    try:
        served.wait_ready()
        basic = "Basic " + base64.b64encode(b"annotators:pw").decode()
        over_http = call("POST", served.url + "/predict", body, headers={**headers, "Authorization": basic})
    finally:
        served.close()
    return (status, json.loads(data)), (over_http.status, json.loads(over_http.data))


def test_gpu_class_answers_a_batch_as_lsfn_serve_does(local_env: Path, tmp_path: Path) -> None:
    shutil.copyfile(yolo_models.detector(), local_env / "shapes-det.pt")
    (status, local), (served_status, served) = answers("yolo", yolo_body(), local_env, tmp_path)
    assert status == served_status == 200
    assert comparable(local) == comparable(served)
    first, second, bad = local["results"]
    assert first["result"] and second["result"] and first["model_version"].startswith("yolo-")
    assert "result" not in bad and "image" in bad["error"]  # the bad task alone failed, the same way


def test_gpu_class_answers_a_click_as_lsfn_serve_does(local_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sam2_models.write_checkpoint(local_env / sam2_models.TINY_CHECKPOINT)
    monkeypatch.setenv("MODEL_SIZE", "tiny")
    get_settings.cache_clear()
    pixels = synthetic.make_image(np.random.default_rng(7), size=(96, 80), shapes=1)[0]
    (status, local), (served_status, served) = answers("sam2", sam2_body(data_uri(pixels)), local_env, tmp_path, MODEL_SIZE="tiny")
    assert status == served_status == 200
    assert comparable(local) == comparable(served)
    (item,) = local["results"]
    assert item["result"][0]["type"] == "brushlabels" and item["result"][0]["value"]["rle"]


def test_gpu_class_moves_a_model_set_up_on_the_cpu(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the snapshot the model is set up with DEVICE=cpu; after restore it is moved, not
    set up again, then warmed up, and /health reports it ready."""
    shutil.copyfile(yolo_models.detector(), local_env / "shapes-det.pt")
    module = load_app(ModalSpec(function="yolo"))
    model_class = module.model_class("yolo")
    calls: list[tuple[str, str]] = []
    for name in ("setup", "move_to", "warmup"):
        original = getattr(model_class, name)

        def spy(self: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append((_name, self.settings.device))
            return _original(self, *args)

        monkeypatch.setattr(model_class, name, spy)
    gpu = module.Function()
    gpu.handle.local("GET", "/health", None, {})
    assert gpu.runtime.loader.wait(60).value == "ready"
    assert calls == [("setup", "cpu"), ("move_to", "auto"), ("warmup", "auto")]
    assert gpu.handle.local("GET", "/health", None, {})[0] == 200
    assert gpu.runtime.model.device == "cpu"  # DEVICE=auto on a machine without a GPU


def test_sam2_is_set_up_on_the_cpu_without_asking_cuda(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sam2 asks torch for a GPU while it builds its model: before a CPU snapshot that would fix
    CUDA's device count at zero for the restored container. The class keeps torch from asking."""
    import torch

    from lsfn.functions.torch_device import cuda_unasked
    from lsfn.shared.runtime.app import Runtime

    sam2_models.write_checkpoint(local_env / sam2_models.TINY_CHECKPOINT)
    monkeypatch.setenv("MODEL_SIZE", "tiny")
    get_settings.cache_clear()
    module = load_app(ModalSpec(function="sam2"))
    model_class, gpu_settings = module.model_class, module.gpu_settings

    def asked() -> int:
        raise AssertionError("the CUDA driver was asked")

    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", asked)
    unguarded = Runtime(model_class("sam2"), gpu_settings())
    unguarded.preload_on_cpu()
    assert not unguarded._on_cpu  # sam2 asked: the test would see it
    guarded = Runtime(model_class("sam2"), gpu_settings())
    with cuda_unasked():
        guarded.preload_on_cpu()
    assert guarded._on_cpu and guarded.model.engine is not None


class FakeCall:
    def __init__(self, outcome: Any) -> None:
        self.outcome, self.timeouts, self.cancelled = outcome, [], False

    def get(self, timeout: float) -> Any:
        self.timeouts.append(timeout)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class FakeMethod:
    def __init__(self, outcome: Any) -> None:
        self.call = FakeCall(outcome)
        self.spawned: list[tuple] = []

    def spawn(self, *args: Any) -> FakeCall:
        if isinstance(self.call.outcome, modal.exception.ConnectionError):
            raise self.call.outcome
        self.spawned.append(args)
        return self.call


@pytest.mark.parametrize(
    ("outcome", "timed_out"),
    [
        (TimeoutError(), True),  # no answer in the call's time: it may still be running
        (modal.exception.FunctionTimeoutError("timeout"), True),
        (modal.exception.OutputExpiredError(), False),  # lost: safe to send again
        (modal.exception.ConnectionError("refused"), False),
        (ValueError("raised in the container"), False),
    ],
)
def test_the_front_doors_modal_upstream_maps_failures(outcome: BaseException, timed_out: bool) -> None:
    from lsfn.shared.runtime.upstream import Unreachable

    method = FakeMethod(outcome)
    with pytest.raises(Unreachable) as raised:
        load_app(ModalSpec(function="yolo")).remote_handler(method)("POST", "/predict", b"{}", {"X-Request-Id": "r"}, 2.5)
    assert raised.value.timed_out is timed_out
    assert not method.call.cancelled  # cancelling would stop the whole (concurrent) container


def test_the_front_doors_modal_upstream_returns_the_answer() -> None:
    method = FakeMethod((200, b'{"results":[]}', {"Content-Type": "application/json"}))
    answer = load_app(ModalSpec(function="yolo")).remote_handler(method)("POST", "/predict", b"{}", {"X-Request-Id": "r"}, 2.5)
    assert answer == (200, b'{"results":[]}', {"Content-Type": "application/json"})
    assert method.spawned == [("POST", "/predict", b"{}", {"X-Request-Id": "r"})] and method.call.timeouts == [2.5]


# -- the front door, upstream bound to .local(), driven by a real Label Studio ----------------------


@pytest.fixture
def modal_local(tmp_path: Path, label_studio_server: LabelStudioServer) -> Iterator[str]:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(yolo_models.detector(), root / "shapes-det.pt")
    port = free_port()
    env = {**os.environ, **yolo_models.offline_env(), "MODEL_ROOT": str(root), "BASIC_AUTH_USER": "annotators",
           "BASIC_AUTH_PASS": "s3cret-pass", "LABEL_STUDIO_URL": label_studio_server.url,
           "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = (tmp_path / "modal-local.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.modal_local", "yolo", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_listening(port, proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
        log.close()


@pytest.mark.e2e
def test_label_studio_uses_the_modal_front_door(label_studio_server: LabelStudioServer, modal_local: str) -> None:
    label_studio, url = label_studio_server, modal_local
    data = held_out(2, (160, 120), seed=1602, shapes=1)
    project = make_project(label_studio, RECT, [pixels for pixels, _ in data])
    assert lsfn_connect(label_studio, project, url).returncode == 1  # Basic auth, from the Modal secret
    connected = lsfn_connect(label_studio, project, url, "--basic-auth", "annotators:s3cret-pass", "--interactive")
    assert connected.returncode == 0, connected.stdout + connected.stderr

    retrieve_predictions(label_studio, project)
    tasks = tasks_by_image(label_studio, project)
    for task in tasks.values():
        (prediction,) = stored(label_studio, task)
        assert prediction["result"] and prediction["model_version"].startswith("yolo-")

    assert_click_boxed(label_studio, project, tasks[0])


@pytest.mark.parametrize(
    ("top", "path", "left_out"),
    [
        ("deploy", "image/weights/sam2.1_hiera_large.pt", True),  # copied on its own, as WEIGHTS_FROM
        ("deploy/image/weights", "sam2.1_hiera_large.pt", False),
        ("deploy", "image/install-function", False),
        ("functions", "yolo/models/shapes.pt", False),  # shipped with the package
        ("functions", "yolo/models/yolov8x.pt", True),  # a stray checkpoint
        ("shared", "runtime/__pycache__/app.cpython-311.pyc", True),
    ],
)
def test_the_image_source_copy_leaves_out_what_the_dockerfile_does(top: str, path: str, left_out: bool) -> None:
    module = load_app(ModalSpec(function="yolo"))
    assert module._ignored(Path(top), Path(path)) is left_out
