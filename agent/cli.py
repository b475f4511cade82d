"""``tierwatch run``, ``tierwatch check`` and ``tierwatch --version``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import Config, ConfigError
from agent.redact import ScrubbingFilter

EXIT_OK, EXIT_FOUND, EXIT_CANNOT_RUN = 0, 1, 2
MAX_CHECK_SECONDS = 3600.0
log = logging.getLogger("tierwatch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierwatch", description="Names the tier that is the bottleneck.")
    parser.add_argument("--version", action="version", version=f"tierwatch {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("TIERWATCH_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "YAML config file (default: $TIERWATCH_CONFIG, else this host plus what answers locally)"
    run = commands.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, default=os.environ.get("TIERWATCH_CONFIG"), help=config_help)
    run.add_argument("--listen", help="HOST:PORT for the HTTP server (default 127.0.0.1:10090)")
    check = commands.add_parser("check", help="one-shot diagnosis of every configured tier")
    check.add_argument("--config", type=Path, default=os.environ.get("TIERWATCH_CONFIG"), help=config_help)
    check.add_argument(
        "--duration", type=_seconds, default=3.0, help="seconds to collect for (rates need two cycles)"
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rules = commands.add_parser("rules", help="print the rule table as Prometheus alerting rules")
    rules_help = "YAML config file whose rule overrides apply (default: $TIERWATCH_CONFIG, else none)"
    rules.add_argument("--config", type=Path, default=os.environ.get("TIERWATCH_CONFIG"), help=rules_help)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_CHECK_SECONDS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_CHECK_SECONDS} seconds")
    return value


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubbingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every job run at INFO; its warnings (missed runs) still come through.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def resolve_config(path: Path | None, listen: str | None = None, *, isolated: bool = False) -> Config:
    """The config file, or with none the embedded default: this host plus what answers locally.
    ``isolated`` checks it in a child process, for the long-running agent (agent/config/isolated.py)."""
    environ = dict(os.environ)
    if listen is not None:
        environ["TIERWATCH_LISTEN"] = listen
    base = None
    if path is None:
        from agent.detect import detect_local

        base = detect_local()
    # Imported where used: the long-running agent never loads YAML or pydantic itself.
    if isolated:
        from agent.config.isolated import load_config_isolated

        return load_config_isolated(path, environ, base)
    from agent.config.loader import load_config

    return load_config(path, environ, base=base)


def print_rules(config: Config) -> int:
    from agent.alerting import configured_rules
    from alerts.promrules import prometheus_rules
    from alerts.table import SIGNALS

    print(prometheus_rules(configured_rules(config), SIGNALS, config.runbook_base_url), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
    except ValueError:
        print(f"tierwatch: unknown log level {args.log_level!r}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if args.command == "run":
        # Until the agent can reload, a SIGHUP (a config-management tool, say) must not end it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if args.command == "run":
            from agent.run import run_agent

            def load() -> Config:
                return resolve_config(args.config, args.listen, isolated=True)

            return run_agent(load(), load)

        if args.command == "rules":
            from agent.config.loader import load_config

            return print_rules(load_config(args.config))
        from agent.check import run_check

        return run_check(resolve_config(args.config), args.duration, as_json=args.json)
    except ConfigError as error:
        print(f"tierwatch: configuration error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Exception:  # an uncaught error would exit 1, which `check` uses for "bottleneck found"
        log.exception("tierwatch %s could not run", args.command)
        return EXIT_CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())
