"""`lsfn create`: a function made in a folder outside the repository passes its own generated test,
which fails once the model's answer is broken; it serves with `lsfn serve main.py:Class` (no
module-level app) and answers a real Label Studio; `lsfn try` runs it with its README's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsfn.deploy.create import TASKS
from tests.label_studio import LabelStudioServer
from tests.serving import Function
from tests.test_e2e import lsfn_connect, make_project, retrieve_predictions, stored, tasks_by_image

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_created_function_passes_its_own_test_and_fails_it_when_broken(task: str, tmp_path: Path) -> None:
    created = run("-m", "lsfn.shared.cli", "create", "my-func", "--task", task, "--dir", str(tmp_path), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    folder = tmp_path / "my-func"
    assert {p.name for p in folder.iterdir()} >= {"main.py", "test_my_func.py", "README.md", "Dockerfile", "weights.json"}
    assert "from lsfn import" in (folder / "main.py").read_text() and "\nhandler = " not in (folder / "main.py").read_text()
    passed = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder), cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout[-2000:]
    main = folder / "main.py"
    main.write_text(main.read_text().replace("        return out\n", "        return [results.prediction([]) for _ in out]\n"))
    broken = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder), cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout[-2000:]


def test_a_created_function_is_tried_with_its_readme_config(tmp_path: Path) -> None:
    from PIL import Image

    assert run("-m", "lsfn.shared.cli", "create", "spots", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    pixels = np.full((60, 80, 3), 10, dtype=np.uint8)
    pixels[10:30, 40:70] = 240
    Image.fromarray(pixels).save(tmp_path / "spot.png")
    done = run("-m", "lsfn.shared.cli", "try", str(tmp_path / "spots" / "main.py:SpotsModel"), str(tmp_path / "spot.png"),
               "--out", str(tmp_path / "out"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (item,) = json.loads((tmp_path / "out" / "spot.json").read_text())["results"]
    (region,) = item["result"]
    assert region["value"]["x"] == pytest.approx(50.0) and region["value"]["width"] == pytest.approx(37.5)
    assert (tmp_path / "out" / "spot.png").is_file()

    # Its declared variable is read at start: a low threshold takes the whole image as bright,
    # a bad one stops it naming the variable.
    args = ("-m", "lsfn.shared.cli", "try", str(tmp_path / "spots" / "main.py:SpotsModel"), str(tmp_path / "spot.png"))
    low = run(*args, "--out", str(tmp_path / "low"), cwd=tmp_path, env={"BRIGHT_THRESHOLD": "0.01"})
    (item,) = json.loads((tmp_path / "low" / "spot.json").read_text())["results"]
    assert low.returncode == 0 and item["result"][0]["value"]["width"] == pytest.approx(100.0), low.stderr
    bad = run(*args, "--out", str(tmp_path / "bad"), cwd=tmp_path, env={"BRIGHT_THRESHOLD": "2"})
    assert bad.returncode == 2 and "BRIGHT_THRESHOLD='2'" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.e2e
def test_a_created_function_answers_label_studio(tmp_path: Path, label_studio_server: LabelStudioServer) -> None:
    assert run("-m", "lsfn.shared.cli", "create", "glow", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    function = Function(f"{tmp_path / 'glow' / 'main.py'}:GlowModel", tmp_path / "serve", {"LABEL_STUDIO_URL": label_studio_server.url,
                        "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567"})  # fmt: skip
    try:
        function.wait_ready()
        pixels = np.full((60, 80, 3), 10, dtype=np.uint8)
        pixels[10:30, 40:70] = 240
        config = (tmp_path / "glow" / "README.md").read_text().split("```xml\n")[1].split("```")[0]
        project = make_project(label_studio_server, config, [pixels])
        connected = lsfn_connect(label_studio_server, project, function.url)
        assert connected.returncode == 0, connected.stdout + connected.stderr
        retrieve_predictions(label_studio_server, project)
        (task,) = tasks_by_image(label_studio_server, project).values()
        (prediction,) = stored(label_studio_server, task)
        (region,) = prediction["result"]
        assert prediction["model_version"] == "glow-0.1" and region["value"]["rectanglelabels"] == ["bright"]
        assert region["value"]["y"] == pytest.approx(100 * 10 / 60)
    finally:
        function.close()
