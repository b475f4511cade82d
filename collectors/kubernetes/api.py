"""The four reads the collector makes, over one API client, each bounded by the cycle's deadline.

Responses are read undecoded (``_preload_content=False``) and parsed as plain JSON; see objects.py for
why. Every failure becomes a ``CollectorError`` with a reason, except a 404 on a named object, which
the caller reports as evidence of the HPA that points at it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, AppsV1Api, AutoscalingV2Api, Configuration, CoreV1Api
from kubernetes.client.exceptions import ApiException

from agent.config import ConfigError
from collectors.base import CollectorError, Reason

MAX_DETAIL = 300
# List calls with resourceVersion "0" are served from the API server's watch cache, not from etcd:
# possibly a second stale, much cheaper for a cluster polled every few seconds.
FROM_CACHE = "0"


class ObjectNotFound(Exception):
    """A named object does not exist (404 with the object's name in the Status details)."""


def new_api_client(kubeconfig: Path | None) -> ApiClient:
    """A client from the kubeconfig file, or from the pod's service account when there is none."""
    configuration = Configuration()
    try:
        if kubeconfig is None:
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            kube_config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
            )
    except (kube_config.ConfigException, OSError, TypeError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"kubernetes: cannot use the {_source(kubeconfig)}: {error}") from None
    except Exception as error:  # a malformed file trips the client elsewhere (a context that is a number)
        # Only the kind of error: its text could quote part of the file, a token included.
        problem = f"malformed ({type(error).__name__})"
        raise ConfigError(f"kubernetes: cannot use the {_source(kubeconfig)}: {problem}") from None
    # urllib3 retries a GET that timed out three more times by default: four times the time budget.
    configuration.retries = False
    return ApiClient(configuration)


def _source(kubeconfig: Path | None) -> str:
    return f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster configuration"


def _status_message(body: str | None) -> str:
    try:
        status = json.loads(body or "")
    except ValueError:
        return (body or "").strip()[:MAX_DETAIL]
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _failure(what: str, error: ApiException) -> CollectorError:
    message = _status_message(error.body) or str(error.reason or "")
    detail = f"{what}: HTTP {error.status}: {message}"[:MAX_DETAIL]
    if error.status == 0:  # the client's wrapper for TLS failures
        return CollectorError(Reason.OTHER, f"{what}: {error.reason}"[:MAX_DETAIL])
    if error.status == 401:
        return CollectorError(Reason.AUTH, detail)
    if error.status == 403:
        return CollectorError(Reason.PERMISSION, f"{detail} (see docs/kubernetes.md for the RBAC rules)")
    return CollectorError(Reason.OTHER, detail)


def _transport_failure(what: str, error: urllib3.exceptions.HTTPError, timeout: float) -> CollectorError:
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    # NewConnectionError subclasses ConnectTimeoutError: refused connections are checked first.
    if isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ProtocolError):
        return CollectorError(Reason.UNREACHABLE, f"{what}: {error}"[:MAX_DETAIL])
    if isinstance(error, urllib3.exceptions.TimeoutError):
        return CollectorError(Reason.TIMEOUT, f"{what}: no answer within {timeout:.2g} s")
    return CollectorError(Reason.OTHER, f"{what}: {type(error).__name__}: {error}"[:MAX_DETAIL])


class _Unauthorized(Exception):
    def __init__(self, error: ApiException) -> None:
        self.error = error


class KubeApi:
    def __init__(self, kubeconfig: Path | None, namespace: str) -> None:
        self.namespace = namespace
        self._kubeconfig = kubeconfig
        self._client = new_api_client(kubeconfig)
        self._autoscaling = AutoscalingV2Api(self._client)
        self._apps = AppsV1Api(self._client)
        self._core = CoreV1Api(self._client)

    def _renew_credentials(self, what: str) -> None:
        """The client reads a kubeconfig's tokenFile once, and runs its exec plugin again only at an
        expiry the plugin states: a token rotated since would be refused until the agent restarts.
        After a 401 they are loaded anew, into a new client, as client-go does."""
        try:
            client = new_api_client(self._kubeconfig)
        except ConfigError as error:
            raise CollectorError(Reason.AUTH, f"{what}: HTTP 401, then {error}"[:MAX_DETAIL]) from None
        self._client.close()
        self._client = client
        for api in (self._autoscaling, self._apps, self._core):
            api.api_client = client

    def close(self) -> None:
        self._client.close()

    def list_hpas(self, deadline: float) -> list[Any]:
        what = f"listing autoscaling/v2 horizontalpodautoscalers in namespace {self.namespace}"
        try:
            body = self._call(
                what,
                self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                deadline,
                resource_version=FROM_CACHE,
            )
        except ObjectNotFound:
            raise CollectorError(
                Reason.OTHER, f"{what}: the API server does not serve autoscaling/v2 (Kubernetes < 1.23?)"
            ) from None
        return _items(what, body)

    def get_deployment(self, name: str, deadline: float) -> Any:
        """The Deployment object; ``ObjectNotFound`` when there is none of that name."""
        what = f"reading deployment {name} in namespace {self.namespace}"
        return self._call(what, self._apps.read_namespaced_deployment, deadline, name=name)

    def list_replicasets(self, selector: str, deadline: float) -> list[Any]:
        return self._list("replicasets", self._apps.list_namespaced_replica_set, selector, deadline)

    def list_pods(self, selector: str, deadline: float) -> list[Any]:
        return self._list("pods", self._core.list_namespaced_pod, selector, deadline)

    def _list(self, resource: str, method: Any, selector: str, deadline: float) -> list[Any]:
        what = f"listing {resource} {selector!r} in namespace {self.namespace}"
        try:
            body = self._call(what, method, deadline, label_selector=selector, resource_version=FROM_CACHE)
        except ObjectNotFound:
            raise CollectorError(Reason.OTHER, f"{what}: the API server answered 404") from None
        return _items(what, body)

    def _call(self, what: str, method: Any, deadline: float, **arguments: Any) -> Any:
        try:
            return self._request(what, method, deadline, arguments)
        except _Unauthorized:
            self._renew_credentials(what)
        try:
            return self._request(what, method, deadline, arguments)
        except _Unauthorized as unauthorized:
            raise _failure(what, unauthorized.error) from None

    def _request(self, what: str, method: Any, deadline: float, arguments: dict[str, Any]) -> Any:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise CollectorError(Reason.TIMEOUT, f"{what}: the cycle's time budget is used up")
        try:
            response = method(
                namespace=self.namespace, _request_timeout=timeout, _preload_content=False, **arguments
            )
            body = response.data
        except ApiException as error:
            if error.status == 404:
                raise ObjectNotFound(_status_message(error.body)) from None
            if error.status == 401:
                raise _Unauthorized(error) from None
            raise _failure(what, error) from None
        except urllib3.exceptions.HTTPError as error:
            raise _transport_failure(what, error, timeout) from None
        try:
            return json.loads(body)
        except ValueError:
            raise CollectorError(Reason.PARSE, f"{what}: the answer is not JSON") from None


def _items(what: str, body: Any) -> list[Any]:
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise CollectorError(Reason.PARSE, f"{what}: the answer is not a list object")
    return items
