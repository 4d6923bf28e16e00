"""The distribution: installed, it adds one import name, ``lsfn``, with the checkout's folders as
its parts and the files they need (weights lists, the shipped detector, the image's install
script), and the public API a function author imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_installing_the_distribution_adds_only_the_lsfn_import_name(tmp_path: Path) -> None:
    # Built from a copy of what the package is made of: a build/ folder left in the checkout by an
    # earlier layout would otherwise be packed too.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "lsfn", "shared", "functions", "deploy"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "weights"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("lsfn-*.whl")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin"}
    assert names == {"lsfn"}  # no `shared`, `functions` or `deploy` beside whatever a user has
    package = site / "lsfn"
    assert {"shared", "functions", "deploy", "__init__.py"} <= {p.name for p in package.iterdir()}
    for needed in ("functions/yolo/weights.json", "functions/yolo/models/shapes.pt", "deploy/image/install-function",
                   "shared/runtime/app.py"):  # fmt: skip
        assert (package / needed).is_file(), needed
    assert not list(package.rglob("test_*.py"))


def test_the_public_api_is_what_an_author_imports() -> None:
    import lsfn
    from lsfn.shared.runtime.model import Model

    assert lsfn.Model is Model
    for name in ("Batch", "TaskInput", "Prediction", "TaskError", "TaskFailure", "results", "coords", "create_app"):
        assert hasattr(lsfn, name), name
    assert set(lsfn.__all__) <= set(dir(lsfn))
