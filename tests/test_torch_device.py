"""functions.torch_device: DEVICE to a torch device, and never the CPU by accident where an
NVIDIA GPU is attached that this torch cannot use (the driver is simulated by its /proc file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsfn.functions import torch_device
from lsfn.functions.torch_device import DeviceError, nvidia_driver, pick_device

L4_DRIVER = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n"
OPEN_DRIVER = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)\n"


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Simulates the host's driver (its /proc file) and the GPU given to the container (/dev)."""
    devices = tmp_path / "dev"
    devices.mkdir()
    monkeypatch.setattr(torch_device, "DEVICE_DIR", devices)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def attach(text: str | None, gpu: bool = True) -> None:
        path = tmp_path / "version"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        (devices / "nvidia0").unlink(missing_ok=True)
        if gpu:
            (devices / "nvidia0").touch()
        monkeypatch.setattr(torch_device, "DRIVER_VERSION_FILE", path)

    return attach


def test_the_driver_version_is_read(driver) -> None:
    driver(L4_DRIVER)
    assert nvidia_driver() == "535.104.05"
    driver(OPEN_DRIVER)
    assert nvidia_driver() == "580.65.06"
    driver(None)
    assert nvidia_driver() is None


@pytest.mark.skipif(torch.cuda.is_available() or not str(torch.version.cuda).startswith("13"),
                    reason="needs a CUDA 13 torch (PyPI's) on a machine without a usable GPU")
def test_auto_with_an_attached_gpu_this_torch_cannot_use_is_an_error(driver) -> None:
    """The L4 trap: a CUDA 13 torch (PyPI's) on Cloud Run's 535 driver would quietly predict on
    the CPU at GPU prices."""
    driver(L4_DRIVER)
    with pytest.raises(DeviceError) as error:
        pick_device("auto")
    message = str(error.value)
    assert f"CUDA {torch.version.cuda}" in message and "535.104.05" in message and "TORCH=cu126" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_a_driver_without_a_gpu_given_to_the_container_is_the_cpu(driver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container on a GPU host that was given no GPU (or told to hide them) runs on the CPU."""
    driver(L4_DRIVER, gpu=False)
    assert pick_device("auto") == "cpu"
    driver(L4_DRIVER, gpu=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pick_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="no NVIDIA GPU is attached"):
        pick_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_auto_without_a_gpu_is_the_cpu_and_cuda_is_an_error(driver) -> None:
    driver(None)
    assert pick_device("auto") == "cpu"
    assert pick_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="DEVICE=cuda: .*no NVIDIA driver is loaded|CPU build"):
        pick_device("cuda")


def test_the_cpu_is_picked_without_asking_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model set up on the CPU before a memory snapshot must not make torch remember "no GPU"
    (CUDA's device count is read once per process): DEVICE=cpu never asks CUDA."""

    def asked() -> bool:
        raise AssertionError("CUDA was asked")

    monkeypatch.setattr(torch.cuda, "is_available", asked)
    assert pick_device("cpu") == "cpu"
    with pytest.raises(AssertionError, match="CUDA was asked"):
        pick_device("auto")


def test_a_torch_model_resolves_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from lsfn.functions.torch_device import TorchModel
    from lsfn.shared.settings import Settings

    asked: list[str] = []

    def pick(setting: str) -> str:
        asked.append(setting)
        return "cpu"

    monkeypatch.setattr(torch_device, "pick_device", pick)
    model = TorchModel(Settings(DEVICE="auto"))
    assert model.device == "cpu" and model.device == "cpu" and asked == ["auto"]  # once
    assert model.use_device("cuda") == "cpu" and asked == ["auto", "cuda"]  # a move resolves the new setting
