"""Loading the configuration in a child process, so that the running agent never imports pydantic.

``tierwatch run`` (and its reload on SIGHUP) starts ``python -m agent.config.isolated``, which reads
the file and the environment, validates with pydantic exactly as ``tierwatch check`` does in-process,
and writes the checked configuration as JSON; the agent rebuilds the frozen dataclasses from it.
pydantic and its schemas would otherwise stay in the agent's memory for its whole life (about 18 MiB,
more than the rest of a host-only agent). Only the child sees the YAML and the password files; what
crosses the pipe is already checked, so rebuilding restores types and judges nothing.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.model import Config, ConfigError, Secret, field_types, without_none

CHILD_TIMEOUT = 60.0
EXIT_INVALID = 2


def load_config_isolated(
    path: Path | None, environ: Mapping[str, str], base: dict[str, Any] | None = None
) -> Config:
    """What load_config(path, environ, base) gives, checked in a child process."""
    request = json.dumps({"path": None if path is None else str(path), "base": base})
    try:
        child = subprocess.run(
            [sys.executable, "-m", "agent.config.isolated"],
            input=request,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"cannot check the configuration in a child process: {error}") from None
    if child.returncode != 0:
        problem = child.stderr.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise ConfigError(problem[0])
    return rebuild(Config, json.loads(child.stdout))


def rebuild(kind: Any, data: Any) -> Any:
    """A value of type ``kind`` from its JSON form: dataclasses, tuples, dicts, optionals, paths and
    secrets; numbers and text as they are (JSON writes 5.0 as 5: floats are restored)."""
    if dataclasses.is_dataclass(kind):
        hints = field_types(kind)
        return kind(**{name: rebuild(hints[name], value) for name, value in data.items()})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return None if data is None else rebuild(without_none(kind), data)
    if origin is tuple:
        return tuple(rebuild(args[0], item) for item in data)
    if origin is dict:
        return {key: rebuild(args[1], value) for key, value in data.items()}
    if kind in (Path, Secret, float):
        return kind(data)
    return data


def _child() -> int:
    from agent.config.loader import config_adapter, load_config

    request = json.load(sys.stdin)
    path = None if request["path"] is None else Path(request["path"])
    try:
        config = load_config(path, base=request["base"])
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    json.dump(config_adapter().dump_python(config, mode="json"), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_child())
