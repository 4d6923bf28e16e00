"""shared.settings: environment variables with label-studio-ml-backend's names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lsfn.shared.settings import Settings, get_settings


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
     ("MAX_CONCURRENT_PREDICTIONS", "many")],
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
