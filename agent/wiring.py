"""Builds collectors from the configuration, importing each tier's client library only when needed.

The kubernetes client alone costs megabytes of memory, so tier modules are imported by name here,
once their section is configured, never at the top of the agent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from agent.config import Config, ConfigError
from agent.config.model import SECRET_SECTIONS
from agent.redact import REDACTOR, passwords_in
from collectors.base import Collector

# Each tier module exposes ``build(config, entry) -> Collector``.
LIST_SECTIONS: dict[str, str] = {
    "postgres": "collectors.postgres",
    "pgbouncer": "collectors.pgbouncer",
    "redis": "collectors.redis",
    "app": "collectors.app",
}
KUBERNETES_MODULE = "collectors.kubernetes"
# What to install for a tier whose client library the base install leaves out.
EXTRAS = {KUBERNETES_MODULE: "tierwatch[kubernetes]"}


def register_secrets(config: Config) -> None:
    for section in SECRET_SECTIONS:
        for entry in getattr(config, section):
            connection = (entry.dsn if section != "redis" else entry.url).get_secret_value()
            REDACTOR.register(passwords_in(connection))
            if entry.password is not None:
                REDACTOR.register([entry.password.get_secret_value()])
    for app in config.app:
        if app.metrics_url is not None:
            REDACTOR.register(passwords_in(app.metrics_url))
    for url in config.alertmanager.urls:
        REDACTOR.register(passwords_in(url))


def _factory(module_name: str) -> Callable[[Config, Any], Collector]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        # A config error, not a crash: at start it exits 2 naming the problem, at reload it keeps
        # the running configuration.
        section = module_name.rpartition(".")[2]
        hint = f"; install {EXTRAS[module_name]}" if module_name in EXTRAS else ""
        raise ConfigError(f"{section}: cannot load its client library: {error}{hint}") from None
    return module.build


def build_collectors(config: Config) -> list[Collector]:
    return list(_collectors(config))


def use_procfs(config: Config) -> None:
    """Points psutil, which reads one procfs for the whole process, at the configuration's (the agent
    has one host). Called when a configuration starts collecting, never while one is only built: a
    reload that fails after building must leave the running configuration its own procfs."""
    psutil.PROCFS_PATH = str(config.host.procfs)


def _collectors(config: Config) -> Iterator[Collector]:
    if config.host.enabled:
        from collectors.host import HostCollector

        host = config.host
        yield HostCollector(host.name, host.procfs, host.sysfs, host.cgroupfs)
    for section, module_name in LIST_SECTIONS.items():
        entries = getattr(config, section)
        if entries:
            build = _factory(module_name)
            yield from (build(config, entry) for entry in entries)
    if config.kubernetes.enabled:
        yield _factory(KUBERNETES_MODULE)(config, config.kubernetes)
