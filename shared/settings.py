"""Every environment variable lsfn reads, typed, in one place.

Names follow label-studio-ml-backend where it has one, including its older spellings
(LABEL_STUDIO_HOST, LABEL_STUDIO_ACCESS_TOKEN, ML_SERVER_BASIC_AUTH_*), so an existing
docker-compose environment keeps working. A function's own variables (MODEL_CHECKPOINT,
BOX_THRESHOLD, ...) are a ``FunctionSettings`` subclass it declares (``Spec.settings_class``),
read once per instance into ``model.options``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["FunctionSettings", "Settings", "environment_problem", "get_settings", "in_process_settings"]

MiB = 1 << 20


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """The runtime's configuration, read from the environment when created."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    # Label Studio, for fetching task files (its /setup `hostname` is usually unusable remotely).
    label_studio_url: str | None = Field(None, validation_alias=_env("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"))
    label_studio_api_key: SecretStr | None = Field(
        None, validation_alias=_env("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN")
    )

    # Who may call the function.
    basic_auth_user: str | None = Field(
        None, validation_alias=_env("BASIC_AUTH_USER", "ML_SERVER_BASIC_AUTH_USER")
    )
    basic_auth_pass: SecretStr | None = Field(
        None, validation_alias=_env("BASIC_AUTH_PASS", "ML_SERVER_BASIC_AUTH_PASS")
    )
    webhook_secret: SecretStr | None = Field(None, validation_alias=_env("WEBHOOK_SECRET"))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias=_env("LOG_LEVEL")
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", validation_alias=_env("DEVICE"))
    model_score_threshold: float = Field(0.5, ge=0.0, le=1.0, validation_alias=_env("MODEL_SCORE_THRESHOLD"))
    # Where the image keeps its weights (label-studio-ml-backend's name and default).
    model_root: Path = Field(Path("/app/models"), validation_alias=_env("MODEL_ROOT"))
    # What the image holds (function, torch build, weights; deploy/image_info.py writes it at
    # build time): reported on /health to authenticated callers. Absent outside an image.
    image_info: Path = Field(Path("/app/image.json"), validation_alias=_env("IMAGE_INFO"))

    # Limits and backpressure.
    max_body_bytes: int = Field(16 * MiB, gt=0, validation_alias=_env("MAX_BODY_BYTES"))
    max_concurrent_predictions: int = Field(2, gt=0, validation_alias=_env("MAX_CONCURRENT_PREDICTIONS"))
    # How long a /predict that arrives during a cold start waits for the model to load; Label
    # Studio waits up to 100 s for /predict, so a cold start fits in one request.
    ready_timeout: float = Field(90.0, ge=0, validation_alias=_env("READY_TIMEOUT"))
    # A /predict is answered this long after it arrived at the latest: tasks not predicted by
    # then are error items, so Label Studio (which gives up after 100 s, storing nothing) stores
    # the finished ones and a later run sends only the rest.
    predict_deadline: float = Field(90.0, gt=0, validation_alias=_env("PREDICT_DEADLINE"))
    # A request that finds every prediction slot taken waits this long for one, behind at most
    # ADMIT_QUEUE others; beyond either, 503 with Retry-After.
    admit_timeout: float = Field(5.0, ge=0, validation_alias=_env("ADMIT_TIMEOUT"))
    admit_queue: int = Field(16, ge=0, validation_alias=_env("ADMIT_QUEUE"))

    # The front door (`lsfn serve FUNCTION --upstream URL`): where the GPU function is and how
    # it is called. The URL comes only from here, never from a request.
    upstream_url: str | None = Field(None, validation_alias=_env("UPSTREAM_URL"))
    # How long the front door keeps trying a cold upstream for a wake-up or a webhook (a
    # /predict is bounded by PREDICT_DEADLINE instead).
    upstream_timeout: float = Field(120.0, gt=0, validation_alias=_env("UPSTREAM_TIMEOUT"))
    # A batch is sent on in chunks of this many tasks, this many chunks at once, so a platform
    # that scales on concurrent requests starts more GPU instances for a big batch.
    upstream_chunk_tasks: int = Field(8, gt=0, validation_alias=_env("UPSTREAM_CHUNK_TASKS"))
    upstream_concurrency: int = Field(4, gt=0, validation_alias=_env("UPSTREAM_CONCURRENCY"))
    # /predict requests the front door forwards at once; more wait as ADMIT_TIMEOUT/ADMIT_QUEUE say.
    upstream_max_requests: int = Field(32, gt=0, validation_alias=_env("UPSTREAM_MAX_REQUESTS"))
    # Seconds without an answer after which the upstream is taken to have scaled to zero.
    upstream_idle_timeout: float = Field(300.0, gt=0, validation_alias=_env("UPSTREAM_IDLE_TIMEOUT"))
    # How the front door proves itself to the upstream: nothing, or a Google ID token of its
    # service account for the upstream's URL (a private Cloud Run service).
    upstream_auth: Literal["none", "google-id-token"] = Field("none", validation_alias=_env("UPSTREAM_AUTH"))

    # Fetching task images.
    fetch_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("FETCH_ALLOWED_HOSTS")
    )
    fetch_timeout: float = Field(15.0, gt=0, validation_alias=_env("FETCH_TIMEOUT"))
    max_image_bytes: int = Field(64 * MiB, gt=0, validation_alias=_env("MAX_IMAGE_BYTES"))
    # Pillow itself refuses more than ~179 M pixels as a decompression bomb.
    max_image_pixels: int = Field(100_000_000, gt=0, validation_alias=_env("MAX_IMAGE_PIXELS"))
    image_cache_bytes: int = Field(256 * MiB, ge=0, validation_alias=_env("IMAGE_CACHE_BYTES"))
    # Videos are streamed to a temporary file, never held in memory.
    max_video_bytes: int = Field(2048 * MiB, gt=0, validation_alias=_env("MAX_VIDEO_BYTES"))
    video_fetch_timeout: float = Field(300.0, gt=0, validation_alias=_env("VIDEO_FETCH_TIMEOUT"))

    # Training (README "Train on your annotations"): where trained versions are kept (file:///…,
    # gs://bucket/prefix, modal-volume://name; unset: no training, the function's own weights),
    # how often an instance asks it which version a project is served with, versions pinned
    # by hand (a version's name, or PROJECT:base for the function's own weights), where an
    # instance keeps the files it fetched, and a training run every N annotations (0: only
    # "Start Training").
    weights_store: str | None = Field(None, validation_alias=_env("WEIGHTS_STORE"))
    weights_refresh: float = Field(60.0, ge=0, validation_alias=_env("WEIGHTS_REFRESH"))
    weights_pin: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias=_env("WEIGHTS_PIN"))
    weights_cache: Path = Field(Path("/tmp/lsfn-trained"), validation_alias=_env("WEIGHTS_CACHE"))
    train_every_n_annotations: int = Field(0, ge=0, validation_alias=_env("TRAIN_EVERY_N_ANNOTATIONS"))
    # On Cloud Run: the job a front door runs an execution of for a training job
    # (projects/P/locations/R/jobs/NAME, set by lsfn deploy cloudrun --train-job), and the Admin
    # API's address (a private endpoint).
    train_job: str | None = Field(None, validation_alias=_env("TRAIN_JOB"))
    cloud_run_api: str = Field("https://run.googleapis.com", validation_alias=_env("CLOUD_RUN_API"))
    # The trainer's options for every job (KEY=VALUE,...: YOLO takes ultralytics' train
    # arguments, e.g. epochs=50,imgsz=640); `lsfn train --train-arg` adds to them.
    train_args: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias=_env("TRAIN_ARGS"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("device", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("fetch_allowed_hosts", "weights_pin", "train_args", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("label_studio_url", "upstream_url", "weights_store", mode="before")
    @classmethod
    def _strip_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            return value or None
        return value

    @field_validator("weights_store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"file:///.+|gs://[^/]+(/.*)?|modal-volume://[^/]+", value):
            raise ValueError("use file:///folder, gs://bucket/prefix or modal-volume://name")
        return value

    @field_validator("weights_pin")
    @classmethod
    def _pins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pin in value:
            if not re.fullmatch(r"\d+:base|.+-\d+-\d+@[0-9a-f]{8}", pin):
                raise ValueError(f"{pin!r}: a version's name (yolo-3-2@1a2b3c4d) or PROJECT:base")
        return value

    @model_validator(mode="after")
    def _auth_complete(self) -> "Settings":
        # Half of a credential pair must not silently leave every route open.
        has_user = bool(self.basic_auth_user)
        has_pass = bool(self.basic_auth_pass and self.basic_auth_pass.get_secret_value())
        if has_user != has_pass:
            missing = "BASIC_AUTH_PASS" if has_user else "BASIC_AUTH_USER"
            raise ValueError(f"basic auth is half configured: set {missing} too, or neither")
        return self

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) when both are set: then every route but / and /health needs them."""
        if self.basic_auth_user and self.basic_auth_pass and self.basic_auth_pass.get_secret_value():
            return self.basic_auth_user, self.basic_auth_pass.get_secret_value()
        return None


class FunctionSettings(BaseSettings):
    """Base of a function's own environment variables: subclass it, one field per variable with
    its name as ``validation_alias``, and name the subclass as the model's ``settings_class``.
    Names are case-sensitive, as in a shell; variables it does not declare are ignored."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")


def environment_problem(exc: ValidationError) -> str:
    """A settings class's validation error as one line naming each variable and its problem
    (pydantic's own text spans lines and links; a user set a variable, not a field)."""
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or exc.title
        value = f"={error['input']!r}" if isinstance(error.get("input"), (str, int, float)) else ""
        problems.append(f"{name}{value}: {error['msg']}")
    return "bad environment: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (tests call ``get_settings.cache_clear()``)."""
    return Settings()


def in_process_settings() -> Settings:
    """The process's settings without Basic auth and the webhook secret, for a function called
    in-process rather than over the network (Modal's GPU class behind its front door, `lsfn
    prelabel local:FUNCTION`): those guard the routes from network clients."""
    return get_settings().model_copy(update={"basic_auth_user": None, "basic_auth_pass": None, "webhook_secret": None})
