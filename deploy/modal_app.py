"""A function on Modal: its GPU class and its front door, from the ``ModalSpec`` in LSFN_MODAL_SPEC
(``lsfn deploy modal`` sets it; the image carries it, so the containers build the same app).

    lsfn deploy modal sam2                        # what users run
    LSFN_FUNCTION=sam2 modal deploy -m lsfn.deploy.modal_app   # the same app with the default options

``Function`` (the GPU class) sets the model up inside ``@modal.enter(snap=True)``: on the CPU,
since a memory snapshot is taken without a GPU, and moved to the GPU after restore; with
``--gpu-snapshot`` (Modal's GPU memory snapshots, alpha) loaded and warmed up on the GPU before
the snapshot. Its one method answers any of the function's routes through the runtime's own
request cycle (``Runtime.call``: the same Predictor, deadline, per-task errors and Server-Timing
as ``lsfn serve``). ``front_door`` serves the front door's WSGI app, calling ``Function.handle``
in-process: no HTTP hop between them, no token (only this workspace's functions can call it).

Modal needs both at module scope (containers import them by name), hence a module per spec
rather than objects a function returns: ``deploy.modal_cli.load_app(spec)`` imports it for a spec.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import modal

from lsfn.deploy.create import DOCKERIGNORE
from lsfn.deploy.cloudrun_spec import DeployError
from lsfn.deploy.modal_spec import SPEC_VARIABLE, ModalSpec, image_steps, source_root
from lsfn.functions.torch_device import cuda_unasked
from lsfn.shared.runtime.upstream import CallUpstream, Handler, Unreachable

__all__ = ["SPEC", "Function", "app", "build_image", "front_door", "front_door_app", "gpu_settings", "image", "model_class",
           "remote_handler", "spawn_training", "train_job"]


def model_class(function: str) -> Any:
    """The Model class a function serves (a built-in one's name, or a created one's LSFN_FUNCTION)."""
    from lsfn.shared.cli import model_class as served_class

    return served_class(function)


def gpu_settings() -> Any:
    """The GPU class's settings: without the front door's credentials. The class has no URL;
    only functions of the same Modal workspace can call it, and its front door does not pass
    the client's Authorization on."""
    from lsfn.shared.settings import in_process_settings

    return in_process_settings()


# Of a created function's folder, the top-level entries its .dockerignore (deploy.create) names.
CREATED_LEFT_OUT = frozenset(line.strip("/") for line in DOCKERIGNORE.split() if line.endswith("/"))


def _ignored(top: Path, path: Path) -> bool:
    """Whether the source copy of the checkout's folder ``top`` leaves out ``path`` (relative to
    it), as the Dockerfile's COPY lines and .dockerignore do: caches, the functions' models/
    folders but for the files the package ships, and the local weights folder (copied on its
    own, as WEIGHTS_FROM)."""
    parts = (top / path).parts
    if "__pycache__" in parts or path.suffix == ".pyc":
        return True
    if top.is_absolute():  # a created function's folder: what its generated .dockerignore leaves out
        return path.parts[0] in CREATED_LEFT_OUT
    if parts[0] == "functions" and "models" in parts[2:-1]:
        return path.name not in ("shapes.pt", "sample.png")
    return top == Path("deploy") and parts[1:3] == ("image", "weights") and len(parts) > 3


def build_image(spec: ModalSpec) -> modal.Image:
    """The image of ``image_steps(spec)``, as Modal builds it (on Modal's builders: the weights
    are downloaded there, checked against their pinned sha256, unless the checkout's
    deploy/image/weights holds them)."""
    image: modal.Image | None = None
    root = source_root()
    for step in image_steps(spec):
        kind = step["step"]
        if kind == "debian_slim":
            image = modal.Image.debian_slim(python_version=step["python_version"])
            continue
        assert image is not None
        if kind == "env":
            image = image.env(step["vars"])
        elif kind == "pip_install":
            options = {key: step[key] for key in ("index_url", "extra_index_url") if key in step}
            image = image.pip_install(*step["packages"], **options)
        elif kind == "add_local":
            for entry in step["files"]:
                local = root / entry["local"]
                if local.is_dir():
                    # Modal passes paths relative to the folder; the rules read them from the checkout's root.
                    ignore = lambda path, top=Path(entry["local"]): _ignored(top, path)  # noqa: E731
                    image = image.add_local_dir(local, entry["remote"], copy=True, ignore=ignore)
                elif local.is_file():
                    image = image.add_local_file(local, entry["remote"], copy=True)
                else:
                    raise DeployError(f"{entry['local']} is not in the checkout ({root})")
        elif kind == "run_commands":
            image = image.run_commands(*step["commands"])
        else:
            raise ValueError(f"unknown image step {kind!r}")
    assert image is not None
    # The spec travels with the image: the containers import this module and build the same app.
    return image.env({**spec.variables(), SPEC_VARIABLE: spec.to_json()})


def remote_handler(method: Any) -> Handler:
    """``Function.handle`` called on Modal as the front door's upstream: spawned and awaited for
    at most the call's time, Modal's failures mapped to ``Unreachable``. A call given up on is
    not cancelled: Modal cancels a synchronous input of a concurrent class by stopping its whole
    container (the other calls in it too), and the function ends it itself at the deadline it
    was given."""

    def handler(verb: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float) -> tuple[int, bytes, Mapping[str, str]]:
        try:
            call = method.spawn(verb, path, body, headers)
        except Exception as exc:  # noqa: BLE001 - Modal's client errors: connection, auth, quota
            raise Unreachable(f"the GPU function could not be called ({type(exc).__name__})", timed_out=False) from None
        try:
            return call.get(timeout=timeout)
        except modal.exception.OutputExpiredError:  # the input was lost: nothing ran it to the end
            raise Unreachable("the GPU function's answer was lost", timed_out=False) from None
        except (TimeoutError, modal.exception.TimeoutError):
            raise Unreachable(f"no answer from the GPU function within {timeout:.1f} s", timed_out=True) from None
        except Exception as exc:  # noqa: BLE001 - re-raised from the container: a crash, a failed set-up
            raise Unreachable(f"the GPU function failed to answer ({type(exc).__name__})", timed_out=False) from None

    return handler


def front_door_app(function: str, handler: Handler, start_training: Callable[[int, str], Callable[[], object]] | None = None) -> Any:
    """The front door's WSGI app for ``function``, its upstream ``handler``; with
    ``start_training(project, job)`` (a spawn of the ``train`` function), "Start Training"
    starts jobs, one per project at a time."""
    from lsfn.shared.cli import resolve_spec
    from lsfn.shared.runtime.front_door import create_front_door
    from lsfn.shared.runtime.train_trigger import TrainTrigger, remote_launcher
    from lsfn.shared.settings import get_settings

    trainer = None
    if start_training is not None:
        trainer = TrainTrigger(remote_launcher(start_training, "modal"), get_settings().train_every_n_annotations)
    app = create_front_door(resolve_spec(function), upstream=CallUpstream(handler), trainer=trainer)
    app.extensions["lsfn"].start()
    return app


def train_job(function: str, project: int, job: str) -> dict[str, Any]:
    """One training job (the ``train`` function's body): `lsfn train FUNCTION --project N` with
    the container's LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY (a secret) and WEIGHTS_STORE."""
    from lsfn.deploy.train_cli import train_project
    from lsfn.shared.settings import in_process_settings

    settings = in_process_settings()
    if not settings.weights_store:
        raise DeployError("the train function has no WEIGHTS_STORE")
    token = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else ""
    report = train_project(function, project, settings, store=settings.weights_store, token=token,
                           log=lambda line: print(f"job {job}: {line}", flush=True))  # fmt: skip
    return report.to_dict()


# -- the app of the spec in the environment ---------------------------------------------------

SPEC = ModalSpec.from_env()
if SPEC is None:
    raise DeployError("set LSFN_FUNCTION (yolo, sam2, grounding_dino, grounding_sam, sam3) to deploy this module, "
                      "or run lsfn deploy modal FUNCTION")  # fmt: skip
SPEC.check()
app = modal.App(SPEC.app, include_source=False)  # the image holds this package: the caller's own source
# Built where the app is defined; inside Modal's containers (which set MODAL_IS_REMOTE) the image
# already exists, and the checkout it is built from is not there.
_in_container = not modal.is_local() or os.environ.get("MODAL_IS_REMOTE") == "1"
image = modal.Image.debian_slim() if _in_container else build_image(SPEC)
secrets = [modal.Secret.from_name(name) for name in SPEC.secrets]
_config = SPEC.config()
_gpu_class = _config["gpu_class"]


@app.cls(
    image=image, gpu=_gpu_class["gpu"], secrets=secrets, cpu=SPEC.cpu, memory=_gpu_class["memory_mib"],
    min_containers=SPEC.min_containers, max_containers=SPEC.max_containers, scaledown_window=SPEC.scaledown_window,
    timeout=SPEC.timeout, enable_memory_snapshot=True, experimental_options=_gpu_class["experimental_options"] or None,
)  # fmt: skip
@modal.concurrent(max_inputs=SPEC.inputs)
class Function:
    """The function with its model, on a GPU; scales to zero."""

    @modal.enter(snap=True)
    def set_up(self) -> None:
        from lsfn.shared.runtime.app import Runtime

        started = time.perf_counter()
        self.runtime = Runtime(model_class(SPEC.target), gpu_settings())
        if SPEC.gpu_snapshot:  # the GPU is attached before a GPU snapshot: load and warm up on it
            self.runtime.start()
            state = self.runtime.loader.wait(SPEC.timeout)
            if state.value != "ready":  # no snapshot of a failed or unfinished load: Modal retries
                raise RuntimeError(f"the model did not load before the snapshot ({state.value}): {self.runtime.loader.error}")
        else:
            # No GPU is attached before a CPU snapshot: torch must not learn "no GPU" here.
            with cuda_unasked():
                self.runtime.preload_on_cpu()
        self.before_snapshot_seconds = time.perf_counter() - started

    @modal.enter(snap=False)
    def start(self) -> None:
        # Moved to the GPU and warmed up in the background: /health answers "loading" meanwhile,
        # and a /predict waits for the model within its deadline, as under `lsfn serve`.
        self.runtime.start()

    @modal.method()
    def handle(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """One request to the function's routes (/predict, /setup, /health, ...), answered as
        ``lsfn serve`` answers it: (status, body, headers)."""
        return self.runtime.call(method, path, body, headers)


_door = _config["front_door"]


@app.function(image=image, secrets=secrets, cpu=_door["cpu"], memory=_door["memory_mib"], timeout=SPEC.timeout,
              min_containers=_door["min_containers"], max_containers=_door["max_containers"], env=_door["env"])  # fmt: skip
@modal.concurrent(max_inputs=_door["concurrent_inputs"])
@modal.wsgi_app()  # public: Label Studio sends Basic auth, which the app checks (BASIC_AUTH_* in a secret)
def front_door() -> Any:
    return front_door_app(SPEC.target, remote_handler(Function().handle), spawn_training if SPEC.train else None)


if SPEC.train:

    @app.function(image=image, secrets=secrets, gpu=_gpu_class["gpu"], cpu=SPEC.cpu, memory=SPEC.memory_mib,
                  timeout=SPEC.train_timeout, max_containers=SPEC.max_containers)  # fmt: skip
    def train(project: int, job: str) -> dict[str, Any]:
        """A training job on a GPU of its own: never in a container that answers predictions."""
        return train_job(SPEC.target, project, job)


def spawn_training(project: int, job: str) -> Callable[[], object]:
    """Start the ``train`` function for a project; what waits for its end."""
    call = train.spawn(project, job)
    return call.get

