"""The user documentation says what the code does: its config examples load, every config key is in
the README's reference, and each runbook states its rule's defaults, tier, severity and root-cause role."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

from agent.alerting import configured_rules
from agent.config.loader import RULE_KEYS, validate_config
from agent.config.model import Config
from alerts.table import RULES
from tests.support import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNBOOK_INDEX = REPO / "docs" / "alerts" / "README.md"
ROOT_CAUSE_MARK = "root cause: while it fires"


def yaml_blocks() -> Iterator[tuple[str, str]]:
    for path in DOCS:
        text = path.read_text()
        for block in re.finditer(r"```ya?ml\n(.*?)```", text, re.DOTALL):
            yield f"{path.relative_to(REPO)}:{text[: block.start()].count(chr(10)) + 1}", block.group(1)


CONFIG_EXAMPLES = [(where, block) for where, block in yaml_blocks() if "apiGroups" not in block]


def with_password_files(node: Any, path: Path) -> Any:
    """The example with every password_file pointing at ``path``: the loader reads them."""
    if isinstance(node, dict):
        return {
            key: str(path) if key == "password_file" else with_password_files(value, path)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [with_password_files(item, path) for item in node]
    return node


@pytest.mark.parametrize(("where", "block"), CONFIG_EXAMPLES, ids=[where for where, _ in CONFIG_EXAMPLES])
def test_config_examples_are_accepted(where: str, block: str, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    config = validate_config(with_password_files(yaml.safe_load(block), password), where)
    configured_rules(config)  # rule overrides are checked against the rule table here


FILE_KEYS = {field: key for key, field in RULE_KEYS.items()}  # the field for_ is the key for
# A rule override's other keys, gathered by the loader: each runbook lists them (checked below).
GATHERED = {"thresholds"}


def config_keys(model: type) -> set[str]:
    """Every key a config file may hold in ``model``'s place, nested sections and entries included."""
    keys = set()
    hints = get_type_hints(model)
    for field in dataclasses.fields(model):
        if field.name in GATHERED:
            continue
        keys.add(FILE_KEYS.get(field.name, field.name))
        for inner in (hints[field.name], *get_args(hints[field.name])):
            if dataclasses.is_dataclass(inner):
                keys |= config_keys(inner)
    return keys


def test_every_config_key_is_in_the_readme_reference() -> None:
    reference = (REPO / "README.md").read_text().partition("## Configuration reference")[2]
    reference = reference.partition("\n## ")[0]
    keys = config_keys(Config)
    # Keys of the example file, and words in code spans of the text and the table.
    spelled = set(re.findall(r"^[\s-]*(\w+):", reference, re.MULTILINE))
    spelled |= {word for span in re.findall(r"`([^`\n]+)`", reference) for word in re.findall(r"\w+", span)}
    assert sorted(keys - spelled) == []


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_runbook_states_its_rule(rule: Any) -> None:
    page = (REPO / rule.runbook).read_text()
    header = page.split("\n## ")[0]
    assert f"**{rule.severity.value}** · tier **{rule.tier}**" in header
    assert (ROOT_CAUSE_MARK in header) == rule.root_cause
    tune = re.search(rf"`(rules: \{{{rule.name}: \{{.*?\}}\}})`", page, re.DOTALL)
    assert tune is not None, "no Tune line"
    documented = yaml.safe_load(tune.group(1))["rules"][rule.name]
    assert documented == {"enabled": True, "for": rule.for_seconds, **rule.thresholds}
    assert f"keeps firing **{rule.keep_firing_seconds:g} s**" in " ".join(page.split())


def test_runbook_index_names_every_root_cause() -> None:
    index = " ".join(RUNBOOK_INDEX.read_text().split())
    named = re.search(r"When a root cause \(([^)]*)\)", index)
    assert named is not None
    assert sorted(named.group(1).split(", ")) == sorted(rule.name for rule in RULES if rule.root_cause)
