"""How alerts and verdicts are shown: /api/v1/alerts, `tierwatch check`, Alertmanager annotations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from alerts.classifier import Verdict
from alerts.lifecycle import Alert

# An annotation travels in every post and every notification: details beyond this are cut.
MAX_DETAILS_CHARS = 4096


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def evidence_of(verdict: Verdict) -> dict[str, Any]:
    evidence: dict[str, Any] = dict(verdict.evidence)
    if verdict.because:
        evidence["because"] = list(verdict.because)
    if verdict.root_causes:
        evidence["root_cause"] = "; ".join(verdict.root_causes)
    return evidence


def describe_evidence(verdict: Verdict) -> str:
    """One line for an Alertmanager description: root cause, what held, then signal=value pairs."""
    parts = [f"root cause: {cause}" for cause in verdict.root_causes]
    if verdict.because:
        parts.append(f"because: {', '.join(verdict.because)}")
    parts += [f"{name}={value:.4g}" for name, value in verdict.evidence.items()]
    return "; ".join(parts)


def details_text(verdict: Verdict) -> str:
    """The target's details (top queries, slow-log entries, HPA state ...) as one JSON line, bounded
    for an Alertmanager annotation; "" when there are none."""
    if not verdict.details:
        return ""
    text = json.dumps(verdict.details, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 3] + "..."


def alert_json(alert: Alert, runbook_base_url: str) -> dict[str, Any]:
    verdict = alert.verdict
    return {
        "name": verdict.rule.name,
        "state": alert.state.value,
        "severity": verdict.rule.severity.value,
        "tier": verdict.rule.tier,
        "target": verdict.target,
        "collector": verdict.collector,
        "active_since": rfc3339(alert.active_since),
        # Alertmanager's startsAt; null while pending.
        "fired_at": rfc3339(alert.fired_at) if alert.fired_at is not None else None,
        "summary": verdict.summary,
        "evidence": evidence_of(verdict),
        "details": dict(verdict.details),
        "remediation": verdict.remediation,
        "runbook_url": runbook_base_url + verdict.rule.runbook,
    }


def verdict_json(verdict: Verdict, runbook_base_url: str) -> dict[str, Any]:
    truth = {True: "holds", False: "clear", None: "unknown"}[verdict.truth]
    return {
        "name": verdict.rule.name,
        "verdict": truth,
        "severity": verdict.rule.severity.value,
        "tier": verdict.rule.tier,
        "target": verdict.target,
        "collector": verdict.collector,
        "summary": verdict.summary,
        "evidence": evidence_of(verdict),
        "details": dict(verdict.details),
        "missing_signals": list(verdict.missing),
        "remediation": verdict.remediation,
        "runbook_url": runbook_base_url + verdict.rule.runbook,
    }
