"""The configuration contract: frozen dataclasses that pydantic validates, unknown keys rejected by name.

They are plain dataclasses rather than pydantic models so that the running agent never imports
pydantic, which with its schemas would be about 18 MiB of the agent's memory: ``tierwatch run``
validates in a child process (agent/config/isolated.py) and rebuilds these from the child's checked
output. Checks beyond types run in ``__post_init__`` (pydantic reports their ValueError with the
entry's place in the file, and the message names the key).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from alerts.names import ALERT_NAMES

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

NAME = re.compile(r"[A-Za-z0-9_.:-]+")
MAX_INTERVAL_SECONDS = 86400
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_LABELS = ("alertname", "severity", "tier", "target")  # set on every alert by tierwatch
LIST_SECTIONS = ("postgres", "pgbouncer", "redis", "app")
# The list sections whose entries are SecretTargets: a password, a password_file, secrets to redact.
SECRET_SECTIONS = ("postgres", "pgbouncer", "redis")


CUT_SHORT = (
    "the user name or password holds a '/', '?' or '#' (or an '@' follows the host): "
    "percent-encode them as %2F, %3F, %23, %40"
)


def userinfo_cut_short(url: str) -> bool:
    """Whether an '@' of the URL falls after its host part. A '/', '?' or '#' left unencoded in a
    password ends the user information early, and the rest of the password is read as the host, port
    or path, which parsers' errors and the logs quote. A unix socket's path (after an empty host) may
    hold an '@' of its own."""
    parts = urlsplit(url)
    return "@" in url and "@" not in parts.netloc and (bool(parts.netloc) or parts.scheme != "unix")


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem found."""


@cache
def field_types(kind: type) -> dict[str, Any]:
    """The resolved types of a configuration dataclass's fields (its class variables left out)."""
    hints = typing.get_type_hints(kind)
    return {item.name: hints[item.name] for item in dataclasses.fields(kind)}


def without_none(kind: Any) -> Any:
    """``X`` of an optional type ``X | None``; any other type as it is."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


class Secret:
    """A password, DSN or URL that may hold one: shown as asterisks, read with get_secret_value()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Only ever called where pydantic validates, so its core is imported there and nowhere else.
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(cls.get_secret_value),
        )


@dataclass(frozen=True, kw_only=True)
class Section:
    # NaN passes every "> 0" check and an infinite interval overflows the scheduler: numbers must be finite.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid", "allow_inf_nan": False}
    # Fields that must be above zero, or at least zero, when set.
    positive: ClassVar[tuple[str, ...]] = ()
    not_negative: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be greater than 0")
        for name in self.not_negative:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must not be negative")


@dataclass(frozen=True, kw_only=True)
class Target(Section):
    name: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits and _ . : - (it is the target label)")


@dataclass(frozen=True, kw_only=True)
class SecretTarget(Target):
    password: Secret | None = None
    # Read by the loader into ``password`` before validation; the path stays for the log.
    password_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class PostgresTarget(SecretTarget):
    positive = ("vcpus",)
    dsn: Secret
    vcpus: int | None = None


@dataclass(frozen=True, kw_only=True)
class PgBouncerTarget(SecretTarget):
    dsn: Secret


@dataclass(frozen=True, kw_only=True)
class RedisTarget(SecretTarget):
    url: Secret = field(default_factory=lambda: Secret("redis://127.0.0.1:6379/0"))


@dataclass(frozen=True, kw_only=True)
class AppTarget(Target):
    positive = ("pool_size",)
    # A regular expression searched in process names, then in command lines.
    process: str | None = None
    metrics_url: str | None = None
    requests_metric: str | None = None
    latency_metric: str | None = None
    pool_size: int | None = None
    hpa: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.process is not None:
            try:
                re.compile(self.process)
            except (re.error, OverflowError) as error:  # a{99999999999}: a repeat count beyond C's int
                raise ValueError(f"process: not a valid regular expression: {error}") from None


@dataclass(frozen=True, kw_only=True)
class HostSection(Section):
    enabled: bool = True
    name: str = field(default_factory=socket.gethostname)
    # A DaemonSet mounts the node's /proc and /sys under /host.
    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")
    cgroupfs: Path = Path("/sys/fs/cgroup")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            raise ValueError("name: must not be empty")


@dataclass(frozen=True, kw_only=True)
class KubernetesSection(Section):
    positive = ("new_pod_window",)
    enabled: bool = False
    kubeconfig: Path | None = None
    namespace: str = "default"
    hpas: tuple[str, ...] = ()
    new_pod_window: float = 600.0


@dataclass(frozen=True, kw_only=True)
class AlertmanagerSection(Section):
    positive = ("resend_interval", "timeout")
    urls: tuple[str, ...] = ()
    resend_interval: float = 60.0
    timeout: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for position, url in enumerate(self.urls):
            # Not quoted: a URL may carry a token as its user name.
            try:
                parts = urlsplit(url)
            except ValueError:  # an unclosed [ of an IPv6 address
                raise ValueError(f"urls[{position}]: not an http:// or https:// URL with a host") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"urls[{position}]: not an http:// or https:// URL with a host")
            if userinfo_cut_short(url):
                raise ValueError(f"urls[{position}]: {CUT_SHORT}")
        # Alertmanager refuses a whole post over one bad label, so every alert would be lost.
        for name, value in self.labels.items():
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"labels: {name!r} is not a label name (letters, digits, _; no leading __)")
            if name in RESERVED_LABELS:
                raise ValueError(f"labels: {name!r} is set by tierwatch on every alert")
            if not value:
                raise ValueError(f"labels: {name!r} has an empty value, which Alertmanager refuses")


@dataclass(frozen=True, kw_only=True)
class RuleOverride(Section):
    """``enabled``, ``for`` and ``keep_firing_for`` (seconds) plus the rule's own thresholds, which the
    loader gathers from the entry's other keys; they are checked against the rule table at start."""

    not_negative = ("for_", "keep_firing_for")
    enabled: bool = True
    for_: float | None = None
    keep_firing_for: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Config(Section):
    positive = ("interval", "timeout", "window")
    listen: str = "127.0.0.1:10090"
    interval: float = 5.0
    # Bound on a cycle's queries; a cycle still running past it when the next is due is reported with
    # reason "timeout". Default 0.8 x interval.
    timeout: float | None = None
    # How far back rules look ("replicas rose within the window"); the exported Prometheus rules use 15m.
    window: float = 900.0

    host: HostSection = field(default_factory=HostSection)
    postgres: tuple[PostgresTarget, ...] = ()
    pgbouncer: tuple[PgBouncerTarget, ...] = ()
    redis: tuple[RedisTarget, ...] = ()
    kubernetes: KubernetesSection = field(default_factory=KubernetesSection)
    app: tuple[AppTarget, ...] = ()
    alertmanager: AlertmanagerSection = field(default_factory=AlertmanagerSection)
    rules: dict[str, RuleOverride] = field(default_factory=dict)
    # Prefix of the runbook links in alerts; the runbooks are docs/alerts/<AlertName>.md in the repo.
    runbook_base_url: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if value is not None and value > MAX_INTERVAL_SECONDS:
                # The scheduler's date arithmetic overflows long before a float does.
                raise ValueError(f"{name}: must be at most {MAX_INTERVAL_SECONDS} seconds (a day)")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen: must be HOST:PORT with a port from 1 to 65535")
        if not host:
            object.__setattr__(self, "listen", f"0.0.0.0:{port}")
        unknown = sorted(set(self.rules) - set(ALERT_NAMES))
        if unknown:
            raise ValueError(f"rules: unknown rule {', '.join(unknown)} (known: {', '.join(ALERT_NAMES)})")
        for section in LIST_SECTIONS:
            names = [entry.name for entry in getattr(self, section)]
            duplicated = sorted({name for name in names if names.count(name) > 1})
            if duplicated:
                raise ValueError(f"{section}: duplicate name {', '.join(duplicated)}")
        # One rule (ConnectionPoolExhaustion) judges both, and alerts are labelled by tier and target
        # alone: a name in both would give two alerts the same labels.
        shared = sorted({e.name for e in self.postgres} & {e.name for e in self.pgbouncer})
        if shared:
            raise ValueError(f"pgbouncer: name {', '.join(shared)} is also a postgres target's; use another")

    @property
    def cycle_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 0.8 * self.interval
