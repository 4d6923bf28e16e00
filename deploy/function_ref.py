"""Which function a deploy is of: a built-in one by its name (``yolo``, ``sam2``, ...), or one
made by `lsfn create` by its folder here (``./my-detector``, ``./my-detector/main.py:MyModel``).

A created function's image holds its folder at ``/app/function`` (its generated Dockerfile and
the Modal image put it there), so the deployed containers serve ``/app/function/main.py``; its
services and app are named after the folder (``lsfn-my-detector``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lsfn.deploy.cloudrun_spec import CREATED_DEFAULTS, FUNCTIONS, DeployError, FunctionDefaults

__all__ = ["FUNCTION_HELP", "IMAGE_FUNCTION_DIR", "FunctionRef", "function_ref"]

IMAGE_FUNCTION_DIR = "/app/function"
# What Cloud Run and Modal accept in a name, with room for "lsfn-" and "-gpu".
_NAME = re.compile(r"[a-z][a-z0-9-]{0,38}")
FUNCTION_HELP = (f"a built-in function ({', '.join(FUNCTIONS)}) or the folder of one made by `lsfn create` "
                 "(its images hold it at /app/function: build them from its Dockerfile)")  # fmt: skip


@dataclass(frozen=True)
class FunctionRef:
    """A function as a deploy names it: ``name`` (in service and app names), ``target`` (its
    LSFN_FUNCTION in the image), its defaults, and for a created function its folder here."""

    name: str
    target: str
    defaults: FunctionDefaults
    folder: Path | None = None

    @property
    def created(self) -> bool:
        return self.folder is not None


def function_ref(value: str) -> FunctionRef:
    """The function a deploy's FUNCTION argument names; DeployError naming what is missing."""
    if value in FUNCTIONS:
        return FunctionRef(value, value, FUNCTIONS[value])
    from lsfn.shared.cli import split_target

    function, class_name = split_target(value)
    path = Path(function).expanduser()
    main = path if path.suffix == ".py" else path / "main.py"
    if not main.is_file():
        raise DeployError(f"no function {value!r}: one of {', '.join(FUNCTIONS)}, or the folder of a function made by "
                          "`lsfn create` (holding main.py), or path/to/module.py:ModelClass")  # fmt: skip
    folder = main.resolve().parent
    name = folder.name.lower().replace("_", "-")
    if not _NAME.fullmatch(name):
        raise DeployError(f"{folder.name!r}: the folder's name names the deployed function (lsfn-{name}): use a name "
                          "of letters, digits and -, starting with a letter, at most 39 characters")  # fmt: skip
    target = f"{IMAGE_FUNCTION_DIR}/{main.name}" + (f":{class_name}" if class_name else "")
    return FunctionRef(name, target, CREATED_DEFAULTS, folder)
