"""What `lsfn deploy modal` asks Modal for, as plain data: the GPU class (scales to zero, memory
snapshots), its front door (a CPU web endpoint) and the image both run, built in the same steps
as the Dockerfile's ``function`` target and with the same scripts. Nothing here imports modal:
``deploy.modal_app`` turns this into a Modal app, ``--dry-run`` prints it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from lsfn.deploy.cloudrun_spec import FUNCTIONS, SECRET_VARIABLES, DeployError, NamesFunction

__all__ = ["SPEC_VARIABLE", "TORCH_BUILDS", "ModalSpec", "app_name", "image_steps", "source_root", "torch_requirements"]

# The spec travels to the containers in this variable: they import the same module and must
# build the same app (class and function names, decorators) from it.
SPEC_VARIABLE = "LSFN_MODAL_SPEC"
TORCH_BUILDS = ("cu126", "cu130", "pypi")  # the Dockerfile's GPU builds
# Modal's own bounds (modal 1.6 refuses others) and Modal's GPU names, for errors before any call.
SCALEDOWN_RANGE = (2, 3600)
GPU_TYPES = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000", "H100", "H100!", "H200", "B200", "ANY")
_GPU = re.compile(r"(?P<type>[A-Za-z0-9!-]+?)(?::(?P<count>[1-8]))?")
# The layout the Dockerfile gives the image (its ENV lines), so that `lsfn serve` and the runtime
# find the same paths on Modal as on Cloud Run.
IMAGE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "YOLO_OFFLINE": "1",
    "YOLO_CONFIG_DIR": "/tmp/ultralytics", "MPLCONFIGDIR": "/tmp/matplotlib", "MODEL_ROOT": "/app/models",
    "IMAGE_INFO": "/app/image.json",
}  # fmt: skip
# Of the checkout, what the image's build reads (the Dockerfile's COPY lines): the package, its
# weights lists and install scripts, the local weights folder (deploy/image/weights).
FRONT_DOOR_MODEL_ROOT = "/app/front-door-models"
SOURCE_PATHS = ("pyproject.toml", "README.md", "lsfn", "shared", "functions", "deploy")
SOURCE_IGNORE = ("**/__pycache__", "**/*.pyc", "functions/*/models/*", "!functions/yolo/models/shapes.pt",
                 "!functions/yolo/models/sample.png", "deploy/image/weights/*")  # fmt: skip


def app_name(function: str) -> str:
    return "lsfn-" + function.replace("_", "-")


def source_root() -> Path:
    """The checkout the image is built from: the one this lsfn runs from, so the image holds the
    caller's own version."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "Dockerfile").is_file():
        raise DeployError(f"lsfn deploy modal builds the image from lsfn's source: run it from a checkout of lsfn "
                          f"(pip install -e '.[modal]'), not from an installed wheel ({root})")  # fmt: skip
    return root


def lsfn_version() -> str:
    try:
        return version("lsfn")
    except PackageNotFoundError:
        return "unknown"


def torch_requirements(torch: str, torch_version: str, torchvision_version: str) -> tuple[list[str], str | None]:
    """The pip requirements and index of a TORCH build, as the Dockerfile's torch stage pins them
    (a cu* build with its local version, so PyPI's CUDA 13 build cannot stand in for it)."""
    local = "" if torch == "pypi" else f"+{torch}"
    packages = [f"torch=={torch_version}{local}"]
    if torchvision_version:
        packages.append(f"torchvision=={torchvision_version}{local}")
    return packages, None if torch == "pypi" else f"https://download.pytorch.org/whl/{torch}"


@dataclass
class ModalSpec(NamesFunction):
    """Everything one deploy decides; validated by ``check``."""

    function: str
    gpu: str = "L4"  # Modal's GPU names; "L4,A10" lists fallbacks in order
    gpu_snapshot: bool = False
    secrets: list[str] = field(default_factory=list)  # Modal secret names, attached to both functions
    env: dict[str, str] = field(default_factory=dict)
    min_containers: int = 0
    max_containers: int = 3
    scaledown_window: int = 300  # seconds a GPU container idles before it stops (an annotator's pause)
    timeout: int = 300  # seconds one call may run (Label Studio gives /predict 100)
    concurrency: int | None = None  # calls one GPU container takes at once (default: the function's)
    # A GPU container's CPU cores and memory (decoding, RLE, the model's CPU copy before the move).
    cpu: float = 2.0
    memory_mib: int = 8192
    front_door_min_containers: int = 1
    torch: str = "cu126"
    torch_version: str = "2.14.1"
    torchvision_version: str = "0.29.1"
    model_size: str = "large"  # SAM 2's size (sam2, grounding_sam)
    # As the Dockerfile's WEIGHTS_LIST and WEIGHTS_FROM, relative to the checkout: another
    # weights.json to bake instead of the function's, and a folder taken before downloading.
    weights_list: str | None = None
    weights_from: str = "deploy/image/weights"
    name: str | None = None
    label_studio_url: str | None = None
    allow_unauthenticated: bool = False
    version: str = field(default_factory=lsfn_version)
    # A function made by `lsfn create` (deploy.function_ref): LSFN_FUNCTION in the image, and
    # its folder here, which the image holds at /app/function. None: a built-in function.
    function_target: str | None = None
    function_source: str | None = None
    # Training on annotations (README "Train on your annotations"): a GPU function `train` that
    # "Start Training" spawns, trained versions in a Modal Volume (default lsfn-<function>-weights).
    train: bool = False
    weights_volume: str | None = None
    train_timeout: int = 6 * 3600

    @property
    def app(self) -> str:
        return self.name or app_name(self.function)

    @property
    def volume(self) -> str:
        """The Modal Volume trained versions are kept in."""
        return self.weights_volume or f"{self.app}-weights"

    @property
    def gpus(self) -> list[str]:
        return [part.strip() for part in self.gpu.split(",") if part.strip()]

    @property
    def inputs(self) -> int:
        return self.concurrency or self.defaults.concurrency

    def check(self) -> None:
        if self.function_target is None and self.function not in FUNCTIONS:
            raise DeployError(f"unknown function {self.function!r}: one of {', '.join(sorted(FUNCTIONS))}, or a function's folder")
        if not self.gpus:
            raise DeployError("--gpu is empty: name a Modal GPU type (L4, A10, L40S, ...)")
        for gpu in self.gpus:
            found = _GPU.fullmatch(gpu)
            if not found or found["type"].upper() not in GPU_TYPES:
                raise DeployError(f"--gpu {gpu!r} is not a Modal GPU type: one of {', '.join(GPU_TYPES)} (fallbacks: L4,A10)")
        if self.torch not in TORCH_BUILDS and not (self.torch == "none" and self.function_target):
            raise DeployError(f"--torch {self.torch!r}: one of {', '.join(TORCH_BUILDS)} (none: a created function without torch)")
        if not 0 <= self.min_containers <= self.max_containers or self.max_containers < 1:
            raise DeployError(f"containers: need 0 <= --min-containers ({self.min_containers}) <= --max-containers "
                              f"({self.max_containers}) and --max-containers >= 1")  # fmt: skip
        if self.front_door_min_containers not in (0, 1):
            raise DeployError("--front-door-min-containers is 1 (always warm: Label Studio's 1 s /health) or 0")
        low, high = SCALEDOWN_RANGE
        if not low <= self.scaledown_window <= high:
            raise DeployError(f"--scaledown-window must be between {low} and {high} seconds (Modal's bounds)")
        if self.timeout < 10 or self.inputs < 1:
            raise DeployError("--timeout must be at least 10 s and --concurrency at least 1")
        if self.cpu < 0.125 or self.memory_mib < 1024:
            raise DeployError("--cpu must be at least 0.125 (cores) and --memory at least 1024 (MiB)")
        secret_env = sorted(SECRET_VARIABLES & set(self.env))
        if secret_env:
            raise DeployError(f"{', '.join(secret_env)} must come from a Modal secret (--secret NAME), not --env")
        if self.train and self.function_target is None and self.function != "yolo":
            raise DeployError(f"--train: {self.function} does not train on annotations (yolo does, and a created function "
                              "that implements train)")  # fmt: skip
        if not 60 <= self.train_timeout <= 24 * 3600:
            raise DeployError("--train-timeout must be between 60 s and 24 h (Modal's bound)")
        image_set = sorted({"LSFN_FUNCTION", SPEC_VARIABLE, "MODEL_SIZE", "MODEL_ROOT", "IMAGE_INFO", "WEIGHTS_STORE"} & set(self.env))
        if image_set:
            raise DeployError(f"{', '.join(image_set)}: set by the image (the weights baked follow them): "
                              "use --model-size, --weights-list, --weights-from")  # fmt: skip

    def open_front_door(self) -> str | None:
        """Why the front door would be open to anyone with its URL, or None. Basic auth comes
        from a secret (BASIC_AUTH_USER/BASIC_AUTH_PASS), so without any secret it has none."""
        if self.secrets or self.allow_unauthenticated:
            return None
        return ("without --secret the front door has no Basic auth (BASIC_AUTH_USER/BASIC_AUTH_PASS come from a Modal "
                "secret) and the function no LABEL_STUDIO_API_KEY: give --secret NAME, or --allow-unauthenticated "
                "for an open demo")  # fmt: skip

    def variables(self) -> dict[str, str]:
        """The plain environment of both functions, beside the image's (secrets come from Modal
        secrets)."""
        out = {"LSFN_FUNCTION": self.target}
        if self.function in ("sam2", "grounding_sam"):
            out["MODEL_SIZE"] = self.model_size
        if self.label_studio_url:
            out["LABEL_STUDIO_URL"] = self.label_studio_url
        if self.train:
            out["WEIGHTS_STORE"] = f"modal-volume://{self.volume}"
        return {**out, **self.env}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModalSpec:
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> ModalSpec | None:
        """The spec the deploying command put in LSFN_MODAL_SPEC (also inside the containers), or
        one from LSFN_FUNCTION for `modal deploy -m lsfn.deploy.modal_app`; None without either."""
        if text := os.environ.get(SPEC_VARIABLE):
            return cls.from_json(text)
        if function := os.environ.get("LSFN_FUNCTION"):
            return cls(function=function)
        return None

    def config(self) -> dict[str, Any]:
        """What a deploy creates, as `--dry-run` prints it: secrets by name only."""
        return {
            "app": self.app,
            "lsfn_version": self.version,
            "gpu_class": {
                "name": "Function", "method": "handle", "gpu": self.gpus if len(self.gpus) > 1 else self.gpus[0],
                "cpu": self.cpu, "memory_mib": self.memory_mib, "min_containers": self.min_containers,
                "max_containers": self.max_containers, "scaledown_window": self.scaledown_window, "timeout": self.timeout,
                "concurrent_inputs": self.inputs, "enable_memory_snapshot": True,
                "experimental_options": {"enable_gpu_snapshot": True} if self.gpu_snapshot else {},
                "loads": "on the GPU before the snapshot" if self.gpu_snapshot
                         else "on the CPU before the snapshot, moved to the GPU after restore",
                "secrets": list(self.secrets),
            },
            "front_door": {
                "name": "front_door", "web_endpoint": "wsgi_app", "requires_proxy_auth": False, "cpu": 0.25,
                "memory_mib": 512, "min_containers": self.front_door_min_containers, "max_containers": 4,
                "concurrent_inputs": 64, "timeout": self.timeout, "secrets": list(self.secrets),
                "env": {"MODEL_ROOT": FRONT_DOOR_MODEL_ROOT},
                "upstream": "Function.handle, in-process (.spawn/.get), no HTTP hop",
            },
            "train_function": {
                "name": "train", "gpu": self.gpus if len(self.gpus) > 1 else self.gpus[0], "timeout": self.train_timeout,
                "cpu": self.cpu, "memory_mib": self.memory_mib, "min_containers": 0, "secrets": list(self.secrets),
                "weights_store": f"modal-volume://{self.volume}",
                "started_by": "Start Training in Label Studio (the front door spawns it, one job per project at a time)",
            } if self.train else None,
            "env": self.variables(),
            "image": image_steps(self),
        }  # fmt: skip


def image_steps(spec: ModalSpec) -> list[dict[str, Any]]:
    """The image as build steps, in order: the Dockerfile's ``function`` target (torch first: the
    slow layer, cached while the source changes), with its scripts."""
    if spec.function_target:
        return _created_image_steps(spec)
    torch_step = _torch_step(spec)
    function = spec.function
    files = [{"local": name, "remote": f"/src/{name}"} for name in SOURCE_PATHS]
    files.append({"local": spec.weights_from, "remote": "/src/weights-from"})
    listing = function
    if spec.weights_list:
        files.append({"local": spec.weights_list, "remote": "/src/weights-list.json"})
        listing = "/src/weights-list.json"
    weights = f"lsfn weights {listing} --dest /app/models --from /src/weights-from --manifest /app/models/weights-manifest.json"
    if function in ("sam2", "grounding_sam"):
        weights += f" --size {spec.model_size}"
    return [
        *_BASE_STEPS,
        torch_step,
        {"step": "add_local", "files": files, "ignore": list(SOURCE_IGNORE)},
        {"step": "run_commands", "commands": [
            f"python /src/deploy/image/check-torch {spec.torch}",
            "pip wheel --no-deps --wheel-dir /wheels /src",
            f'sh /src/deploy/image/install-function {function} "$(ls /wheels/lsfn-*.whl)"',
            weights,
            *_info_steps(function, spec.torch),
        ]},
    ]  # fmt: skip


_BASE_STEPS: list[dict[str, Any]] = [
    {"step": "debian_slim", "python_version": "3.11"},
    {"step": "env", "vars": IMAGE_ENV},
    {"step": "pip_install", "packages": ["pip>=24"]},
]


def _torch_step(spec: ModalSpec) -> dict[str, Any]:
    packages, index = torch_requirements(spec.torch, spec.torch_version, spec.torchvision_version)
    step: dict[str, Any] = {"step": "pip_install", "packages": packages}
    if index:
        step |= {"index_url": index, "extra_index_url": "https://pypi.org/simple"}
    return step


def _info_steps(function: str, torch: str) -> list[str]:
    return [
        f"python -m lsfn.deploy.image_info {function} --torch-build {torch} "
        "--manifest /app/models/weights-manifest.json > /app/image.json",
        # The front door's weights directory: the manifest alone, as in its Cloud Run image (it
        # answers the versions from the listed hashes instead of hashing GBs at start).
        f"mkdir -p {FRONT_DOOR_MODEL_ROOT} && cp /app/models/weights-manifest.json {FRONT_DOOR_MODEL_ROOT}/",
    ]


def _created_image_steps(spec: ModalSpec) -> list[dict[str, Any]]:
    """A function made by `lsfn create`, as its Dockerfile builds it: lsfn without a model
    library, the folder at /app/function (less what its .dockerignore leaves out: models/, the
    local weights), its requirements.txt, its weights.json's files downloaded and checked."""
    from lsfn.deploy.function_ref import IMAGE_FUNCTION_DIR as folder

    if not spec.function_source:
        raise DeployError(f"{spec.function}: the image needs the function's folder (function_source)")
    files = [{"local": name, "remote": f"/src/{name}"} for name in SOURCE_PATHS]
    files.append({"local": spec.function_source, "remote": folder})
    torch = [] if spec.torch == "none" else [_torch_step(spec)]
    checks = [] if spec.torch == "none" else [f"python /src/deploy/image/check-torch {spec.torch}"]
    return [
        *_BASE_STEPS,
        *torch,
        {"step": "add_local", "files": files, "ignore": list(SOURCE_IGNORE)},
        {"step": "run_commands", "commands": [
            *checks,
            "pip wheel --no-deps --wheel-dir /wheels /src",
            'pip install "$(ls /wheels/lsfn-*.whl)"',
            f"if [ -f {folder}/requirements.txt ]; then pip install -r {folder}/requirements.txt; fi",
            f"lsfn weights {folder}/weights.json --dest /app/models --manifest /app/models/weights-manifest.json",
            *_info_steps(spec.function, spec.torch),
        ]},
    ]  # fmt: skip
