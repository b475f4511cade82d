"""The configuration contract: frozen models that reject unknown keys by name."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from alerts.names import ALERT_NAMES

Seconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _read_password_file(data: Any) -> Any:
    """Turns ``password_file`` into ``password`` before validation; the file's path stays for the log."""
    if not isinstance(data, dict) or not data.get("password_file"):
        return data
    path = Path(str(data["password_file"]))
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise ValueError(f"password_file {path}: {error.strerror or error}") from None
    return {**data, "password": secret}


class Target(Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")]


class SecretTarget(Target):
    password: SecretStr | None = None
    password_file: Path | None = None

    _password_from_file = model_validator(mode="before")(_read_password_file)


class PostgresTarget(SecretTarget):
    dsn: SecretStr
    vcpus: Annotated[int, Field(gt=0)] | None = None


class PgBouncerTarget(SecretTarget):
    dsn: SecretStr


class RedisTarget(SecretTarget):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")


class AppTarget(Target):
    # A regular expression searched in process names, then in command lines.
    process: str | None = None
    metrics_url: str | None = None
    requests_metric: str | None = None
    latency_metric: str | None = None
    pool_size: Annotated[int, Field(gt=0)] | None = None
    hpa: str | None = None

    @field_validator("process")
    @classmethod
    def _process_is_a_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value


class HostSection(Section):
    enabled: bool = True
    name: str = Field(default_factory=socket.gethostname, min_length=1)
    # A DaemonSet mounts the node's /proc and /sys under /host.
    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")
    cgroupfs: Path = Path("/sys/fs/cgroup")


class KubernetesSection(Section):
    enabled: bool = False
    kubeconfig: Path | None = None
    namespace: str = "default"
    hpas: tuple[str, ...] = ()
    new_pod_window: Seconds = 600.0


class AlertmanagerSection(Section):
    urls: tuple[str, ...] = ()
    resend_interval: Seconds = 60.0
    timeout: Seconds = 10.0
    labels: dict[str, str] = Field(default_factory=dict)


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class RuleOverride(BaseModel):
    """``enabled``, ``for`` and ``keep_firing_for`` (seconds) plus the rule's own thresholds, checked
    against the rule table at start."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    enabled: bool = True
    for_: float | None = Field(default=None, ge=0, alias="for")
    keep_firing_for: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _thresholds_from_text(cls, data: Any) -> Any:
        """Environment variables give thresholds as text: "0.8" means 0.8."""
        if not isinstance(data, dict):
            return data
        known = {"enabled", "for", "for_", "keep_firing_for"}
        return {key: _number_or_text(value) if key not in known else value for key, value in data.items()}

    @model_validator(mode="after")
    def _thresholds_are_numbers(self) -> Self:
        for key, value in (self.model_extra or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"threshold {key!r} must be a number")
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        return {key: float(value) for key, value in (self.model_extra or {}).items()}


class Config(Section):
    listen: str = "127.0.0.1:10090"
    interval: Seconds = 5.0
    # A cycle that takes longer is abandoned and reported with reason "timeout"; default 0.8 x interval.
    timeout: Seconds | None = None
    # How far back rules look ("replicas rose within the window"); the exported Prometheus rules use 15m.
    window: Seconds = 900.0

    host: HostSection = Field(default_factory=HostSection)
    postgres: tuple[PostgresTarget, ...] = ()
    pgbouncer: tuple[PgBouncerTarget, ...] = ()
    redis: tuple[RedisTarget, ...] = ()
    kubernetes: KubernetesSection = Field(default_factory=KubernetesSection)
    app: tuple[AppTarget, ...] = ()
    alertmanager: AlertmanagerSection = Field(default_factory=AlertmanagerSection)
    rules: dict[str, RuleOverride] = Field(default_factory=dict)
    # Prefix of the runbook links in alerts; the runbooks are docs/alerts/<AlertName>.md in the repo.
    runbook_base_url: str = ""

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be HOST:PORT with a port from 1 to 65535")
        return value if host else f"0.0.0.0:{port}"

    @field_validator("rules")
    @classmethod
    def _rules_are_known(cls, value: dict[str, RuleOverride]) -> dict[str, RuleOverride]:
        unknown = sorted(set(value) - set(ALERT_NAMES))
        if unknown:
            raise ValueError(f"unknown rule {', '.join(unknown)} (known: {', '.join(ALERT_NAMES)})")
        return value

    @model_validator(mode="after")
    def _names_are_unique(self) -> Self:
        for section in ("postgres", "pgbouncer", "redis", "app"):
            names = [entry.name for entry in getattr(self, section)]
            duplicated = sorted({name for name in names if names.count(name) > 1})
            if duplicated:
                raise ValueError(f"{section}: duplicate name {', '.join(duplicated)}")
        return self

    @property
    def cycle_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 0.8 * self.interval
