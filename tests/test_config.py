"""Configuration: a good file, each kind of bad file (exit 2, message naming the problem), overrides."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.config.isolated import load_config_isolated
from agent.config.loader import load_config
from tests.support import REPO, AgentProcess, free_port

SECRET = "Sup3r-S3cret-pw"
GOOD = f"""
listen: 0.0.0.0:10091
interval: 2
host:
  name: node-a
  procfs: /host/proc
postgres:
  - name: orders
    dsn: "host=db.internal port=5432 dbname=orders user=tierwatch password={SECRET}"
    vcpus: 8
redis:
  - name: sessions
    url: redis://cache.internal:6379/0
app:
  - name: api
    process: gunicorn
    pool_size: 20
    hpa: api
kubernetes:
  enabled: true
  namespace: shop
  hpas: [api]
alertmanager:
  urls: [http://alertmanager:9093]
rules:
  DatabaseBound:
    for: 30
    load_per_vcpu: 0.8
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tierwatch.yaml"
    path.write_text(text)
    return path


def run_check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "agent.cli",
        "check",
        "--config",
        str(config),
        "--duration",
        "0.2",
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_good_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.listen == "0.0.0.0:10091"
    assert config.interval == 2.0
    assert config.cycle_timeout == pytest.approx(1.6)
    assert config.host.procfs == Path("/host/proc")
    assert config.postgres[0].name == "orders"
    assert config.postgres[0].vcpus == 8
    assert config.postgres[0].dsn.get_secret_value().endswith(SECRET)
    assert config.app[0].pool_size == 20
    assert config.kubernetes.hpas == ("api",)
    assert config.rules["DatabaseBound"].for_ == 30
    assert config.rules["DatabaseBound"].thresholds == {"load_per_vcpu": 0.8}
    assert SECRET not in repr(config)
    assert SECRET not in str(dataclasses.asdict(config))


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 1  # type: ignore[misc]


def test_child_process_gives_the_same_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    environ = {
        "PATH": "/usr/bin:/bin",
        "TIERWATCH_INTERVAL": "7",
        "TIERWATCH_REDIS__CACHE2__URL": "redis://h:6380/0",
    }
    isolated = load_config_isolated(path, environ)
    assert isolated == load_config(path, environ)
    assert isolated.interval == 7.0
    assert isinstance(isolated.interval, float)
    assert isolated.postgres[0].dsn.get_secret_value().endswith(SECRET)
    base = {"postgres": [{"name": "local", "dsn": "host=/run/postgresql"}]}
    assert load_config_isolated(None, {}, base) == load_config(None, {}, base=base)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("interval: 0\n", ["interval: must be greater than 0"]),
        (
            "bogus: 1\nhost: {enabled: maybe}\n",
            ["bogus: unknown key", "host.enabled: Input should be a valid boolean"],
        ),
    ],
)
def test_child_process_reports_what_is_wrong(tmp_path: Path, text: str, problems: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as in_process:
        load_config(path, {})
    with pytest.raises(ConfigError) as isolated:
        load_config_isolated(path, {})
    assert str(isolated.value) == str(in_process.value)
    for problem in problems:
        assert problem in str(isolated.value)


def test_running_agent_never_loads_pydantic_or_yaml(tmp_path: Path) -> None:
    with AgentProcess(tmp_path, {"interval": 1, "host": {}}) as agent:
        assert agent.process is not None
        maps = Path(f"/proc/{agent.process.pid}/maps").read_text()
    assert "pydantic" not in maps
    assert "_yaml" not in maps


def test_environment_overrides_fields_and_entries(tmp_path: Path) -> None:
    environ = {
        "TIERWATCH_INTERVAL": "7",
        "TIERWATCH_HOST__NAME": "node-b",
        "TIERWATCH_POSTGRES__ORDERS__VCPUS": "16",
        "TIERWATCH_REDIS__CACHE2__URL": "redis://127.0.0.1:6380/0",
        "TIERWATCH_ALERTMANAGER__URLS": "[http://a:9093, http://b:9093]",
        "TIERWATCH_POSTGRES__ORDERS__PASSWORD": "0123",
    }
    config = load_config(write(tmp_path, GOOD), environ=environ)
    assert config.interval == 7.0
    assert config.host.name == "node-b"
    assert config.postgres[0].vcpus == 16
    assert [entry.name for entry in config.redis] == ["sessions", "cache2"]
    assert config.alertmanager.urls == ("http://a:9093", "http://b:9093")
    # stays a string: a password of digits must not turn into a number
    assert config.postgres[0].password is not None
    assert config.postgres[0].password.get_secret_value() == "0123"


def test_password_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(f"{SECRET}\n")
    text = f"redis:\n  - name: r\n    url: redis://127.0.0.1:6379\n    password_file: {secret_file}\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.redis[0].password is not None
    assert config.redis[0].password.get_secret_value() == SECRET
    with pytest.raises(ConfigError, match="password and password_file are both set; keep one"):
        load_config(write(tmp_path, text), environ={"TIERWATCH_REDIS__R__PASSWORD": "other"})


def test_a_password_file_that_is_not_text_is_named_not_quoted(tmp_path: Path) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_bytes(b"p\xe9ss\xff")
    # A port nobody listens on: a `check` that wrongly accepted the file must not reach this machine's
    # own Redis on its default port.
    url = f"redis://127.0.0.1:{free_port()}"
    text = f"redis:\n  - name: r\n    url: {url}\n    password_file: {secret_file}\n"
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2
    assert f"password_file {secret_file}: not UTF-8 text" in result.stderr
    assert "0xe9" not in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("interval: [1, 2\nhost: {}\n", "YAML syntax error at line"),
        ("host:\n  procf: /proc\n", "host.procf: unknown key"),
        ("redis:\n  - name: r\n    urll: redis://x\n", "redis[0].urll: unknown key"),
        ("interval: often\n", "interval: Input should be a valid number"),
        ("interval: -1\n", "interval: must be greater than 0"),
        ("listen: nowhere\n", "listen: must be HOST:PORT"),
        ("postgres:\n  - name: p\n", "postgres[0].dsn: required key is missing"),
        ("redis:\n  - name: r\n    password_file: /nonexistent/pw\n", "password_file /nonexistent/pw"),
        ("rules:\n  DatabaseBoundd: {}\n", "unknown rule DatabaseBoundd"),
        ("app:\n  - name: api\n    process: '(unclosed'\n", "app[0].process: not a valid regular expression"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        (
            "postgres: [{name: orders, dsn: host=x}]\npgbouncer: [{name: orders, dsn: host=y}]\n",
            "pgbouncer: name orders is also a postgres target's",
        ),
        # PyYAML keeps the last of two keys silently: the first section's targets would be dropped.
        (
            "postgres: [{name: orders, dsn: host=x}]\nhost: {}\npostgres: []\n",
            "YAML syntax error at line 3, column 1: a key given twice in one mapping",
        ),
        (
            "redis:\n  - name: r\n    url: redis://127.0.0.1:1\n    url: redis://127.0.0.1:2\n",
            "YAML syntax error at line 4, column 5: a key given twice in one mapping",
        ),
    ],
)
def test_bad_config_exits_2_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr


def test_keys_merged_in_with_an_alias_may_be_overridden(tmp_path: Path) -> None:
    text = "rules:\n  DatabaseBound: &slow {for: 60}\n  LockContention: {<<: *slow, for: 30}\n"
    rules = load_config(write(tmp_path, text), environ={}).rules
    assert (rules["DatabaseBound"].for_, rules["LockContention"].for_) == (60, 30)


def test_a_file_that_is_not_utf8_is_named_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "tierwatch.yaml"
    path.write_bytes(b"interval: 2\nredis: [{name: r, password: p\xe9ss\xff}]\n")
    result = run_check(path)
    assert result.returncode == 2
    assert f"{path}: not UTF-8 text (line 2)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "0xe9" not in result.stderr


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_password_file_is_an_error(tmp_path: Path, content: str) -> None:
    """Drivers take an empty password as none: the only sign would be failed logins."""
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(content)
    url = f"redis://127.0.0.1:{free_port()}"
    text = f"redis:\n  - name: r\n    url: {url}\n    password_file: {secret_file}\n"
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2
    assert f"redis[0]: password_file {secret_file}: is empty" in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_check(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml: cannot read" in result.stderr


def test_password_in_dsn_never_appears_in_errors(tmp_path: Path) -> None:
    # The YAML error sits on the line holding the password: the message gives the position only.
    broken = f'postgres:\n  - name: p\n    dsn: "host=x password={SECRET}" extra: [\n'
    result = run_check(write(tmp_path, broken))
    assert result.returncode == 2
    assert "YAML syntax error" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    # A type error on the DSN itself must not echo the value either.
    wrong_type = f"postgres:\n  - name: p\n    dsn: {{password: {SECRET}}}\n"
    result = run_check(write(tmp_path, wrong_type))
    assert result.returncode == 2
    assert "postgres[0].dsn" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("password", ["[Xk9wQ2zL]", "{Xk9wQ2zL}", "{a, b}", "[a, b]"])
def test_an_environment_value_is_text_where_the_field_is_text(tmp_path: Path, password: str) -> None:
    """Flow syntax is read only for lists and mappings: a password may start with [ or {."""
    environ = {
        "TIERWATCH_REDIS__SESSIONS__PASSWORD": password,
        "TIERWATCH_APP__API__PROCESS": "[g]unicorn",
        "TIERWATCH_KUBERNETES__HPAS": "[api, worker]",
        "TIERWATCH_ALERTMANAGER": "{labels: {team: db}}",
    }
    config = load_config(write(tmp_path, GOOD), environ=environ)
    assert config.redis[0].password is not None
    assert config.redis[0].password.get_secret_value() == password
    assert config.app[0].process == "[g]unicorn"
    assert config.kubernetes.hpas == ("api", "worker")
    assert config.alertmanager.labels == {"team": "db"}


def test_an_entry_name_is_found_as_a_variable_name_spells_it(tmp_path: Path) -> None:
    """A shell's variable names hold none of . : - (the characters a target name may have)."""
    text = (
        "redis:\n  - {name: cache.eu-west:1, url: redis://a}\n  - {name: cache_eu_west_1, url: redis://b}\n"
        "  - {name: sessions.eu, url: redis://c}\n"
    )
    environ = {
        "TIERWATCH_REDIS__CACHE_EU_WEST_1__URL": "redis://b2",
        "TIERWATCH_REDIS__SESSIONS_EU__URL": "redis://c2",
    }
    config = load_config(write(tmp_path, text), environ=environ)
    assert [(entry.name, entry.url.get_secret_value()) for entry in config.redis] == [
        ("cache.eu-west:1", "redis://a"),  # the entry spelled exactly as the variable is the one set
        ("cache_eu_west_1", "redis://b2"),
        ("sessions.eu", "redis://c2"),
    ]


def test_unknown_environment_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="intervall: unknown key"):
        load_config(write(tmp_path, "host: {}\n"), environ={"TIERWATCH_INTERVALL": "5"})


def test_kubernetes_service_links_are_not_configuration(tmp_path: Path) -> None:
    """A pod in a namespace with Services named tierwatch-* gets variables for each of them."""
    environ = {
        "TIERWATCH_NODE_SERVICE_HOST": "10.0.0.7",
        "TIERWATCH_NODE_SERVICE_PORT": "10090",
        "TIERWATCH_NODE_SERVICE_PORT_METRICS": "10090",
        "TIERWATCH_NODE_PORT": "tcp://10.0.0.7:10090",
        "TIERWATCH_NODE_PORT_10090_TCP": "tcp://10.0.0.7:10090",
        "TIERWATCH_NODE_PORT_10090_TCP_ADDR": "10.0.0.7",
        "TIERWATCH_PORT": "tcp://10.0.0.8:10090",  # a Service named tierwatch
        "TIERWATCH_INTERVAL": "7",
    }
    assert load_config(write(tmp_path, "host: {}\n"), environ=environ).interval == 7


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("interval: .nan\n", "interval: Input should be a finite number"),
        ("interval: .inf\n", "interval: Input should be a finite number"),
        (
            "rules: {MemorySwapping: {for: .nan}}\n",
            "rules.MemorySwapping.for: Input should be a finite number",
        ),
        (
            "rules: {MemorySwapping: {memory_used_ratio: .nan}}\n",
            "rules.MemorySwapping.memory_used_ratio: Input should be a finite number",
        ),
    ],
)
def test_numbers_must_be_finite(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ("{my-team: db}", "'my-team' is not a label name"),
        ("{__team: db}", "'__team' is not a label name"),
        ("{severity: page}", "'severity' is set by tierwatch on every alert"),
        ("{team: ''}", "'team' has an empty value"),
    ],
)
def test_alertmanager_labels_are_ones_alertmanager_takes(tmp_path: Path, labels: str, problem: str) -> None:
    text = f"alertmanager: {{urls: [http://am:9093], labels: {labels}}}\n"
    with pytest.raises(ConfigError, match=re.escape(f"alertmanager.labels: {problem}")):
        load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, "alertmanager: {labels: {team: db}}\n")).alertmanager.labels == {
        "team": "db"
    }


@pytest.mark.parametrize("url", ["s3cret-token@am:9093", "ftp://am:9093", "http://", "http://s3cret@[am/"])
def test_alertmanager_urls_must_be_http_with_a_host(tmp_path: Path, url: str) -> None:
    """Each post would fail with urllib's error, which quotes the URL and whatever token it holds."""
    text = f"alertmanager: {{urls: [http://a:9093, '{url}']}}\n"
    with pytest.raises(ConfigError, match=re.escape("alertmanager.urls[1]: not an http://")) as error:
        load_config(write(tmp_path, text))
    assert "s3cret" not in str(error.value)


def test_an_alertmanager_url_whose_password_an_unencoded_slash_cuts_short_is_refused(tmp_path: Path) -> None:
    text = "alertmanager: {urls: ['http://admin:Zx9k/Qw3m@am:9093']}\n"
    with pytest.raises(
        ConfigError, match=re.escape("alertmanager.urls[0]: the user name or password")
    ) as error:
        load_config(write(tmp_path, text))
    assert "Zx9k" not in str(error.value)
    assert "Qw3m" not in str(error.value)


def test_rule_overrides_from_environment() -> None:
    environ = {
        "TIERWATCH_RULES__DATABASEBOUND__FOR": "60",
        "TIERWATCH_RULES__MemorySwapping__memory_used_ratio": "0.8",
        "TIERWATCH_RULES__MEMORYSWAPPING__KEEP_FIRING_FOR": "5",
    }
    rules = load_config(None, environ=environ).rules
    assert rules["DatabaseBound"].for_ == 60
    assert rules["MemorySwapping"].thresholds == {"memory_used_ratio": 0.8}
    assert rules["MemorySwapping"].keep_firing_for == 5
    with pytest.raises(ConfigError, match="threshold 'memory_used_ratio' must be a number"):
        load_config(None, environ={"TIERWATCH_RULES__MemorySwapping__memory_used_ratio": "lots"})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("redis:\n  - name: r\n    password: *Xk9wQ2zLpT\n", "found undefined alias '...'"),
        ("redis:\n  - name: r\n    password: !Xk9wQ2zLpT\n", "constructor for the tag '...'"),
    ],
)
def test_a_yaml_error_never_quotes_an_unquoted_password(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert problem in str(error.value)
    assert "Xk9wQ2zLpT" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("host: {name: 2024-02-30}\n", "a value reads as an invalid date (day is out of range for month)"),
        ("interval: 1e12\n", "interval: must be at most 86400 seconds"),
        ("timeout: 1e300\n", "timeout: must be at most 86400 seconds"),
        ("app: [{name: a, process: 'a{99999999999}'}]\n", "process: not a valid regular expression"),
        ("interval: " + "[" * 5000 + "\n", "lists or mappings nested too deeply"),
        ("x: &a [*a]\n", "values, counting what each YAML alias repeats (or an alias holds itself)"),
        (
            # a few lines that expand to 9**8 values
            "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)).replace(
                "*l0", "x"
            ),
            "more than 100000 values, counting what each YAML alias repeats",
        ),
    ],
)
def test_values_beyond_what_the_agent_can_use_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(write(tmp_path, text))
