"""shared.settings: environment variables with label-studio-ml-backend's names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from lsfn import FunctionSettings, Model
from lsfn.shared.settings import Settings, environment_problem, get_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("LABEL_STUDIO_HOST", "LABEL_STUDIO_ACCESS_TOKEN", "ML_SERVER_BASIC_AUTH_USER",
                 "ML_SERVER_BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.label_studio_url is None and settings.label_studio_api_key is None
    assert settings.basic_auth is None
    assert settings.log_level == "INFO" and settings.device == "auto"
    assert settings.model_score_threshold == 0.5
    assert settings.fetch_allowed_hosts == ()


@pytest.mark.parametrize(
    "names",
    [
        ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"),
        ("LABEL_STUDIO_HOST", "LABEL_STUDIO_ACCESS_TOKEN", "ML_SERVER_BASIC_AUTH_USER", "ML_SERVER_BASIC_AUTH_PASS"),
    ],
    ids=["current", "older"],
)
def test_reads_label_studio_ml_backend_names(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> None:
    for name, value in zip(names, (" http://ls.internal:8080/ ", "0123456789abcdef", "lsuser", "lspass")):
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.label_studio_url == "http://ls.internal:8080"
    assert settings.label_studio_api_key.get_secret_value() == "0123456789abcdef"
    assert "0123456789abcdef" not in repr(settings)  # secrets stay out of logs
    assert settings.basic_auth == ("lsuser", "lspass")


def test_reads_the_runtime_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("DEVICE", "CUDA")
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", "files.local, 10.0.0.0/8,")
    monkeypatch.setenv("MAX_CONCURRENT_PREDICTIONS", "4")
    settings = Settings()
    assert (settings.log_level, settings.device) == ("DEBUG", "cuda")
    assert settings.fetch_allowed_hosts == ("files.local", "10.0.0.0/8")
    assert settings.max_concurrent_predictions == 4


@pytest.mark.parametrize(("given", "missing"), [("BASIC_AUTH_USER", "BASIC_AUTH_PASS"), ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")])
def test_half_configured_basic_auth_is_refused(monkeypatch: pytest.MonkeyPatch, given: str, missing: str) -> None:
    # Half a credential pair must not leave every route open without a word.
    monkeypatch.setenv(given, "u")
    with pytest.raises(ValidationError, match=missing):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("DEVICE", "tpu"), ("LOG_LEVEL", "LOUD"), ("MODEL_SCORE_THRESHOLD", "2"), ("MAX_BODY_BYTES", "-1"),
     ("MAX_CONCURRENT_PREDICTIONS", "many"), ("WEIGHTS_STORE", "s3://bucket/x"), ("WEIGHTS_PIN", "yolo-latest")],
)
def test_bad_values_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_get_settings_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("DEVICE", "cpu")
    first = get_settings()
    monkeypatch.setenv("DEVICE", "cuda")
    assert get_settings() is first and first.device == "cpu"
    get_settings.cache_clear()


class _Options(FunctionSettings):
    threshold: float = Field(0.5, ge=0, le=1, validation_alias="MY_THRESHOLD")
    labels: int = Field(3, gt=0, validation_alias="MY_LABELS")


class _Declared(Model):
    settings_class = _Options
    options: _Options


def test_a_function_declares_its_variables_and_reads_them_once_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(Model(Settings()).options, FunctionSettings)  # nothing declared: none read
    monkeypatch.setenv("MY_THRESHOLD", "0.25")
    model = _Declared(Settings())
    monkeypatch.setenv("MY_THRESHOLD", "0.75")
    assert (model.options.threshold, model.options.labels) == (0.25, 3)
    assert _Declared(Settings()).options.threshold == 0.75
    monkeypatch.setenv("my_threshold", "0.1")  # names are case-sensitive, as in a shell
    monkeypatch.delenv("MY_THRESHOLD")
    assert _Declared(Settings()).options.threshold == 0.5


def test_a_bad_function_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_THRESHOLD", "2")
    monkeypatch.setenv("MY_LABELS", "none")
    with pytest.raises(ValidationError) as caught:
        _Declared(Settings())
    problem = environment_problem(caught.value)
    assert "\n" not in problem and "http" not in problem
    assert problem.startswith("bad environment: MY_THRESHOLD='2': Input should be less than or equal to 1")
    assert "; MY_LABELS='none': Input should be a valid integer" in problem


def test_lsfn_serve_refuses_a_bad_variable_in_one_sentence(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_SIZE": "huge"}
    done = subprocess.run([sys.executable, "-m", "lsfn.shared.cli", "serve", "sam2", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "lsfn: bad environment: MODEL_SIZE='huge': Input should be 'tiny', 'small', 'base_plus' or 'large'"
