"""The torch device every model function runs on, from DEVICE (auto, cpu, cuda, mps), and the
refusal to run on the CPU by accident where a GPU was paid for.

A torch built for a newer CUDA than the machine's NVIDIA driver supports sees no GPU at all
(PyPI's torch is built for CUDA 13, which needs a >= 580 driver; Cloud Run's L4 runs 535). With
``auto`` that used to mean predicting on the CPU at GPU prices: when the machine has an NVIDIA
driver and this torch was built for CUDA, a torch that cannot use it is an error naming both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lsfn.shared.runtime.model import Model

__all__ = ["DeviceError", "TorchModel", "cuda_unasked", "gpu_attached", "inference", "nvidia_driver", "pick_device"]

# The kernel module's version file: present where the NVIDIA driver is loaded, also inside any
# container on such a host, GPU or not.
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# Where the GPUs given to this container appear (/dev/nvidia0, ...): only those passed in.
DEVICE_DIR = Path("/dev")
# The oldest driver each CUDA major release runs on (NVIDIA's minor-version compatibility:
# a CUDA 12.x build runs on any 525+ driver, 13.x on 580+).
MIN_DRIVER = {12: 525, 13: 580}


class DeviceError(RuntimeError):
    """The device DEVICE asks for cannot be used; the model does not load and /health says why."""


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version (``535.104.05``) when one is loaded, else None."""
    try:
        text = DRIVER_VERSION_FILE.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text) or re.search(r"\b(\d{3}\.\d+(?:\.\d+)?)\b", text)
    return found.group(1) if found else "unknown"


def gpu_attached() -> bool:
    """An NVIDIA GPU is given to this process: the driver is loaded, a GPU device node is there,
    and CUDA_VISIBLE_DEVICES does not hide them all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return nvidia_driver() is not None and any(DEVICE_DIR.glob("nvidia[0-9]*"))


def _unusable_gpu(torch_module: object, setting: str) -> str:
    """Why this torch cannot use the GPU, in terms a deployer can act on."""
    torch_version = torch_module.__version__  # type: ignore[attr-defined]
    built_for = torch_module.version.cuda  # type: ignore[attr-defined]
    driver = nvidia_driver()
    if built_for is None:
        return f"DEVICE={setting}: torch {torch_version} is a CPU build; build the image with a CUDA torch (--build-arg TORCH=cu126)"
    needs = MIN_DRIVER.get(int(built_for.split(".")[0]))
    need = f" (needs an NVIDIA driver >= {needs})" if needs else ""
    if driver is None or not gpu_attached():
        missing = "no NVIDIA driver is loaded" if driver is None else "no NVIDIA GPU is attached to this container"
        return f"DEVICE={setting}: torch {torch_version} is built for CUDA {built_for}{need}, and {missing}"
    major = driver.split(".")[0]
    if needs and major.isdigit() and int(major) < needs:
        return (f"DEVICE={setting}: torch {torch_version} is built for CUDA {built_for}{need}, and this machine's "
                f"NVIDIA driver is {driver}: build the image with --build-arg TORCH=cu126 (CUDA 12.6 runs on drivers >= 525)")  # fmt: skip
    return f"DEVICE={setting}: torch {torch_version} (CUDA {built_for}) cannot use the GPU of NVIDIA driver {driver}"


def pick_device(setting: str) -> str:
    """``auto`` is CUDA when there is one, else the CPU, except where an NVIDIA GPU is attached
    and torch was built for CUDA but cannot use it: that, and ``cuda`` without a usable GPU,
    raise DeviceError. On CUDA, matmuls and convolutions may use TF32 (Ampere and later; as
    Meta's SAM 2 notebooks and label-studio-ml-backend run)."""
    import torch

    if setting in ("cpu", "mps"):
        # CUDA is not asked about: torch remembers a first "no GPU", and a model set up on the
        # CPU before a memory snapshot (Modal) must still find the GPU attached after restore.
        return setting
    usable = torch.cuda.is_available()
    if setting == "auto":
        if not usable and torch.version.cuda is not None and gpu_attached():
            raise DeviceError(_unusable_gpu(torch, setting))
        device = "cuda" if usable else "cpu"
    else:
        device = setting
    if device.startswith("cuda"):
        if not usable:
            raise DeviceError(_unusable_gpu(torch, setting))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


@contextmanager
def cuda_unasked() -> Iterator[None]:
    """Within it, torch.cuda.is_available() and device_count() answer "no GPU" without asking
    the driver. CUDA's device count is read once per process and kept: a model set up on the
    CPU before a memory snapshot (Modal), where no GPU is attached, must not fix it at zero for
    the restored process, which has one. Libraries ask while they build a model (sam2 does)."""
    try:
        import torch
    except ImportError:  # an image without torch (a created function): nothing can ask CUDA
        yield
        return
    saved = torch.cuda.is_available, torch.cuda.device_count
    torch.cuda.is_available, torch.cuda.device_count = (lambda: False), (lambda: 0)
    try:
        yield
    finally:
        torch.cuda.is_available, torch.cuda.device_count = saved


@contextmanager
def inference(device: object) -> Iterator[None]:
    """No autograd, and bf16 autocast on CUDA as Meta's SAM notebooks run their models (float32
    elsewhere); ``device`` is a torch.device."""
    import torch

    with torch.inference_mode():
        if getattr(device, "type", None) == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


class TorchModel(Model):
    """A Model whose weights run on a torch device. ``device`` is DEVICE resolved once, when
    ``setup`` first asks for it (a DeviceError then fails the load, which /health reports);
    ``use_device`` resolves another setting, for ``move_to`` after a memory snapshot."""

    _device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = pick_device(self.settings.device)
        return self._device

    def use_device(self, setting: str) -> str:
        self._device = pick_device(setting)
        return self._device
