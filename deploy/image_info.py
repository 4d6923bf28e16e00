"""What an image holds, written at build time into ``/app/image.json`` (``IMAGE_INFO``) and
reported by the function on ``/health``: the function, lsfn's version, the torch build (its
version and the CUDA it was compiled for, read from torch itself rather than from the build
arguments) and the weights manifest. A deployed instance can then be asked what it runs.

    python -m lsfn.deploy.image_info FUNCTION --torch-build cu126 --manifest /app/models/weights-manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from lsfn.shared.weights import read_manifest

__all__ = ["image_info", "main"]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def image_info(function: str, role: str, torch_build: str | None, manifest: Path | None) -> dict[str, Any]:
    """The record of one image (``role``: ``function`` or ``front-door``)."""
    info: dict[str, Any] = {"function": function, "role": role, "lsfn": _version("lsfn"), "torch": None}
    if _version("torch") is not None:
        import torch

        info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "build": torch_build,
                         "torchvision": _version("torchvision")}  # fmt: skip
    if manifest is not None:
        info["weights"] = list(read_manifest(manifest).values())
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsfn.deploy.image_info", description=__doc__.splitlines()[0])
    parser.add_argument("function")
    parser.add_argument("--role", choices=["function", "front-door"], default="function")
    parser.add_argument("--torch-build", help="the TORCH build argument (cu126, pypi, cpu, ...)")
    parser.add_argument("--manifest", type=Path, help="the weights manifest `lsfn weights --manifest` wrote")
    args = parser.parse_args(argv)
    json.dump(image_info(args.function, args.role, args.torch_build, args.manifest), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
