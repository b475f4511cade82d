"""Reads the YAML file, applies ``TIERWATCH_`` environment overrides, validates, and reports problems.

Error messages name the place (file, key path, environment variable) but never echo a value: a
value may be a password.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.config.model import (
    LIST_SECTIONS,
    SECRET_SECTIONS,
    Config,
    ConfigError,
    RuleOverride,
    field_types,
    without_none,
)
from alerts.names import ALERT_NAMES

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

ENV_PREFIX = "TIERWATCH_"
# Variables that steer the CLI rather than override a config field.
NOT_FIELDS = frozenset({"TIERWATCH_CONFIG", "TIERWATCH_LOG_LEVEL"})
# Kubernetes gives each container variables for every Service in its namespace (unless the pod sets
# enableServiceLinks: false, as the chart does): a Service tierwatch-node becomes
# TIERWATCH_NODE_SERVICE_HOST, TIERWATCH_NODE_PORT_10090_TCP_ADDR and so on. They are skipped: none has
# the double underscore of a nested config key, and no top-level key ends like them.
SERVICE_LINK = re.compile(
    r"TIERWATCH_(\w+_)?(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)"
)
QUOTED = re.compile(r"'[^']*'")  # a quoted token in a YAML error message
# Far beyond any real configuration, far below what a few lines of nested YAML aliases expand to (the
# copy made for environment overrides expands them).
MAX_VALUES = 100_000
# What an entry name's characters become in a variable name: a shell's names hold none of . : -
NOT_IN_VARIABLE_NAMES = re.compile(r"[.:-]")
_ALERT_NAMES_BY_LOWER = {name.lower(): name for name in ALERT_NAMES}


RULE_KEYS = {"enabled": "enabled", "for": "for_", "keep_firing_for": "keep_firing_for"}
_KEYS_OF_FIELDS = {field: key for key, field in RULE_KEYS.items()}


def load_config(
    path: Path | None, environ: Mapping[str, str] | None = None, base: Mapping[str, Any] | None = None
) -> Config:
    """The file at ``path`` (or ``base``, the embedded default, when there is none) plus overrides."""
    raw = _read_yaml(path) if path is not None else _copy(dict(base or {}))
    raw = apply_environment(raw, os.environ if environ is None else environ)
    return validate_config(raw, str(path) if path is not None else "configuration")


@cache
def config_adapter() -> TypeAdapter[Config]:
    """pydantic's validator and serializer of Config, built once per process. pydantic is imported
    here and in validate_config, not at the top: the running agent validates in a child process and
    must not carry it (agent/config/isolated.py)."""
    from pydantic import TypeAdapter

    return TypeAdapter(Config)


def validate_config(raw: Mapping[str, Any], origin: str = "configuration") -> Config:
    """The checked Config of a raw mapping (as read from YAML), or a ConfigError naming every problem."""
    from pydantic import ValidationError

    try:
        return config_adapter().validate_python(_prepared(raw, origin))
    except ValidationError as error:
        raise ConfigError(f"{origin}: {describe_errors(error)}") from None


def _prepared(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """What dataclass validation cannot do itself: read password files into ``password`` and gather
    each rule override's thresholds from its other keys."""
    prepared = dict(raw)
    for section in SECRET_SECTIONS:
        entries = prepared.get(section)
        if isinstance(entries, list):
            prepared[section] = [
                _with_password_file(entry, f"{origin}: {section}[{index}]")
                for index, entry in enumerate(entries)
            ]
    rules = prepared.get("rules")
    if isinstance(rules, dict):
        prepared["rules"] = {
            name: _rule_override(override, f"{origin}: rules.{name}") for name, override in rules.items()
        }
    return prepared


def _with_password_file(entry: Any, where: str) -> Any:
    if not isinstance(entry, dict) or not entry.get("password_file"):
        return entry
    if entry.get("password") is not None:
        raise ConfigError(f"{where}: password and password_file are both set; keep one")
    path = Path(str(entry["password_file"]))
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise ConfigError(f"{where}: password_file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:  # its message would quote a byte of the password
        raise ConfigError(f"{where}: password_file {path}: not UTF-8 text") from None
    if not secret:
        # Drivers read an empty password as none: the cause would show only as failed logins.
        raise ConfigError(f"{where}: password_file {path}: is empty")
    return {**entry, "password": secret}


def _rule_override(override: Any, where: str) -> Any:
    if not isinstance(override, dict):
        return override
    fields = {RULE_KEYS[key]: value for key, value in override.items() if key in RULE_KEYS}
    thresholds = {
        key: _threshold(value, key, where) for key, value in override.items() if key not in RULE_KEYS
    }
    return {**fields, "thresholds": thresholds} if thresholds else fields


def _threshold(value: Any, key: str, where: str) -> float:
    """Environment variables give thresholds as text: "0.8" means 0.8."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: threshold {key!r} must be a number")
    return value


class _Loader(yaml.SafeLoader):
    """YAML forbids a key twice in one mapping, and PyYAML would keep the last silently: a second
    ``postgres:`` section would drop the first one's targets. Keys merged in with ``<<`` may be
    overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:  # its message would quote a byte, perhaps of a password
        line = content.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as error:
        # The marked snippet of the offending line could hold a secret: report the position only.
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        # Some problems quote the token they stopped at ("found undefined alias 'x'"): an unquoted
        # password that starts with * or ! would be that token.
        problem = QUOTED.sub("'...'", error.problem or type(error).__name__)
        raise ConfigError(f"{path}: YAML syntax error at {where}: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({type(error).__name__})") from None
    except ValueError as error:  # a value YAML reads as a date that is none (2024-02-30)
        raise ConfigError(f"{path}: a value reads as an invalid date ({error}); quote it") from None
    except RecursionError:
        raise ConfigError(f"{path}: lists or mappings nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}")
    if _expands_beyond(data, MAX_VALUES):
        raise ConfigError(
            f"{path}: more than {MAX_VALUES} values, counting what each YAML alias repeats"
            " (or an alias holds itself)"
        )
    return data


def _expands_beyond(data: Any, limit: int) -> bool:
    count, pending = 0, [data]
    while pending:
        item = pending.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def describe_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        where = _location(item["loc"])
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{where}: unknown key")
        elif item["type"] in ("missing", "missing_keyword_argument"):
            lines.append(f"{where}: required key is missing")
        elif item["type"] == "value_error":
            # A model's own check; its message starts with the key it is about.
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}.{message}" if item["loc"] else message)
        else:
            lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def _location(loc: tuple[int | str, ...]) -> str:
    """The key path as the file spells it: a rule override's thresholds are keys of the override
    itself, and ``for_`` is ``for``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "thresholds":
            key = _KEYS_OF_FIELDS.get(part, part)
            text += f".{key}" if text else key
    return text or "(top level)"


def apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``TIERWATCH_A__B__C=v`` sets key path a.b.c; in list sections the second part is an entry's
    name (a new entry is made when none matches) or its index."""
    merged = _copy(raw)
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in NOT_FIELDS:
            continue
        if "__" not in variable and SERVICE_LINK.fullmatch(variable):
            continue
        parts = [part.lower() for part in variable.removeprefix(ENV_PREFIX).split("__")]
        if not all(parts):
            raise ConfigError(f"environment variable {variable}: empty key part")
        if parts[0] == "rules" and len(parts) > 1:
            # Variable names are case-insensitive here; alert names are not: restore their spelling.
            parts[1] = _ALERT_NAMES_BY_LOWER.get(parts[1], parts[1])

        _set_path(merged, parts, _parse_value(environ[variable], _holds_collection(parts)), variable)
    return merged


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _parse_value(text: str, collection: bool) -> Any:
    # Scalars stay strings (a password like "0123" or "[x]" must stay as it is); pydantic converts
    # numbers and booleans in lax mode. Lists and mappings use YAML flow syntax: [a, b] or {k: v}.
    if collection and text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def _holds_collection(parts: list[str]) -> bool:
    """Whether the key path names a section, a list or a mapping of the model, rather than a value."""
    kind: Any = Config
    for part in parts:
        kind = without_none(kind)
        if dataclasses.is_dataclass(kind):
            key = RULE_KEYS.get(part, part) if kind is RuleOverride else part
            kind = field_types(kind).get(key)
        elif typing.get_origin(kind) in (tuple, dict):
            kind = typing.get_args(kind)[0 if typing.get_origin(kind) is tuple else 1]  # entry or map value
        else:
            return False
    kind = without_none(kind)
    return dataclasses.is_dataclass(kind) or typing.get_origin(kind) in (tuple, dict)


def _set_path(node: dict[str, Any], parts: list[str], value: Any, variable: str) -> None:
    section, rest = parts[0], parts[1:]
    if section in LIST_SECTIONS and rest:
        entries = node.get(section)
        if entries is None:
            entries = node[section] = []
        if not isinstance(entries, list):
            raise ConfigError(f"environment variable {variable}: section {section} is not a list")
        node, rest = _list_entry(entries, rest[0]), rest[1:]
        if not rest:
            raise ConfigError(f"environment variable {variable}: names an entry but no field")
    else:
        rest = parts
    for key in rest[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[rest[-1]] = value


def _list_entry(entries: list[Any], selector: str) -> dict[str, Any]:
    if selector.isdigit() and int(selector) < len(entries) and isinstance(entries[int(selector)], dict):
        return entries[int(selector)]
    named = [entry for entry in entries if isinstance(entry, dict)]
    # The name as spelled first (a.b, when a_b is also an entry), then as a shell variable spells it.
    for spelling in (str.lower, _as_in_variable_name):
        for entry in named:
            if spelling(str(entry.get("name", ""))) == spelling(selector):
                return entry
    entry = {"name": selector}
    entries.append(entry)
    return entry


def _as_in_variable_name(name: str) -> str:
    return NOT_IN_VARIABLE_NAMES.sub("_", name.lower())
