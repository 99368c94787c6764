"""The networked bridge: the typed service clients over HTTP to each environment's server.

httpx carries the hops, tenacity retries what is safe to retry (a connection that was never
made), every call has a timeout, and every failure becomes a typed error: the receiver's own
4xx comes back as the same `TrifectaError` (its field and message intact), and an environment
that cannot be reached, or answers 5xx, is `Unavailable`, which the loop treats as "try the
next admitted environment or refuse".
"""

from __future__ import annotations

from typing import TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from trifecta.context.deltas import Delta, DeltaResult
from trifecta.context.learn_queue import LearnTicket
from trifecta.context.learning import LearnResult
from trifecta.context.models import (
    DomainStats,
    MemoryQuery,
    MemorySearchResult,
    PlaybookView,
    Retrieval,
    RetrieveRequest,
)
from trifecta.context.trajectory import Trajectory
from trifecta.core import errors
from trifecta.core.logging import REQUEST_ID_HEADER, current_request_id
from trifecta.federation.http_server import (
    PREFIX,
    BiasVersionNumber,
    CapsuleCall,
    DeltaCall,
    DrainCall,
    DrainResult,
    RetrieveCall,
    SearchCall,
)
from trifecta.federation.receiver import refuse_unless_admitted
from trifecta.federation.services import (
    CognitiveClient,
    CompleteRequest,
    CompleteResponse,
    ContextClient,
    EdgeClient,
    EnvironmentHealth,
    GenerativeClient,
    GenerativeFeedback,
    OffloadRequest,
    OffloadResponse,
    RuleClient,
    RuleRequest,
    RuleResponse,
    ServedRecord,
    Service,
)
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment, Topology
from trifecta.generative.service import GenerativeRequest, GenerativeResponse

M = TypeVar("M", bound=BaseModel)
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 60.0  # a cascade can decode on three tiers under load
_ERRORS: dict[str, type[errors.TrifectaError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.NotFound,
        errors.Conflict,
        errors.Forbidden,
        errors.SovereigntyViolation,
        errors.Unauthenticated,
        errors.Infeasible,
        errors.Unavailable,
    )
}


def _error_from(environment: str, response: httpx.Response) -> errors.TrifectaError:
    """The receiver's error as the same typed error here (5xx: the environment is unwell)."""
    try:
        body = response.json()["error"]
        code, message, field = body["code"], body["message"], body.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "", response.text[:200], None
    if response.status_code >= 500 or code not in _ERRORS:
        return errors.Unavailable(
            f"environment {environment!r} answered {response.status_code}: {message}",
            field="environment",
        )
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    return _ERRORS[code](message, field=field)


def _forward_request_id(request: httpx.Request) -> None:
    """The hop carries the id of the request it serves, so the environment logs it too."""
    request_id = current_request_id()
    if request_id is not None:
        request.headers[REQUEST_ID_HEADER] = request_id


class EnvironmentLink:
    """One environment's server, as seen from this process."""

    def __init__(
        self,
        environment: Environment,
        url: str,
        *,
        credential: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.environment = environment
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/") + PREFIX,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
            event_hooks={"request": [_forward_request_id]},
        )

    @retry(
        retry=retry_if_exception_type(httpx.ConnectError),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.05, max=0.5),
        reraise=True,
    )
    def _send(self, method: str, path: str, body: BaseModel | None) -> httpx.Response:
        content = body.model_dump_json() if body is not None else None
        return self.http.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )

    def call(self, method: str, path: str, body: BaseModel | None, model: type[M]) -> M:
        return model.model_validate_json(self._raw(method, path, body).content)

    def _raw(self, method: str, path: str, body: BaseModel | None) -> httpx.Response:
        name = self.environment.name
        try:
            response = self._send(method, path, body)
        except httpx.HTTPError as exc:
            raise errors.Unavailable(
                f"environment {name!r} cannot be reached ({type(exc).__name__})",
                field="environment",
            ) from None
        if response.status_code >= 400:
            raise _error_from(name, response)
        return response

    def tiers(self) -> list[str]:
        return TypeAdapter(list[str]).validate_json(
            self._raw("GET", "/cognitive/tiers", None).content
        )

    def served(self) -> list[ServedRecord]:
        raw = self._raw("GET", "/served", None).content
        return TypeAdapter(list[ServedRecord]).validate_json(raw)

    def close(self) -> None:
        self.http.close()


class HttpCognitive:
    def __init__(self, link: EnvironmentLink):
        self.link = link

    def tiers(self) -> list[str]:
        return self.link.tiers()

    def complete(self, request: CompleteRequest) -> CompleteResponse:
        return self.link.call("POST", "/cognitive/complete", request, CompleteResponse)


class HttpContext:
    def __init__(self, link: EnvironmentLink):
        self.link = link

    def retrieve(self, capsule_id: str, request: RetrieveRequest) -> Retrieval:
        body = RetrieveCall(capsule_id=capsule_id, request=request)
        return self.link.call("POST", "/context/retrieve", body, Retrieval)

    def learn(self, trajectory: Trajectory) -> LearnResult:
        return self.link.call("POST", "/context/learn", trajectory, LearnResult)

    def submit(self, trajectory: Trajectory) -> LearnTicket:
        return self.link.call("POST", "/context/submit", trajectory, LearnTicket)

    def drain(self, timeout_s: float) -> bool:
        body = DrainCall(timeout_s=timeout_s)
        return self.link.call("POST", "/context/drain", body, DrainResult).drained

    def apply_delta(self, capsule_id: str, delta: Delta) -> DeltaResult:
        body = DeltaCall(capsule_id=capsule_id, delta=delta)
        return self.link.call("POST", "/context/apply_delta", body, DeltaResult)

    def playbook(self, capsule_id: str) -> PlaybookView:
        body = CapsuleCall(capsule_id=capsule_id)
        return self.link.call("POST", "/context/playbook", body, PlaybookView)

    def stats(self, capsule_id: str) -> DomainStats:
        body = CapsuleCall(capsule_id=capsule_id)
        return self.link.call("POST", "/context/stats", body, DomainStats)

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult:
        body = SearchCall(capsule_id=capsule_id, query=query)
        return self.link.call("POST", "/context/search_memories", body, MemorySearchResult)


class HttpEdge:
    def __init__(self, link: EnvironmentLink):
        self.link = link

    def offload(self, request: OffloadRequest) -> OffloadResponse:
        return self.link.call("POST", "/edge/offload", request, OffloadResponse)


class HttpGenerative:
    def __init__(self, link: EnvironmentLink):
        self.link = link

    def complete(self, request: GenerativeRequest) -> GenerativeResponse:
        return self.link.call("POST", "/generative/complete", request, GenerativeResponse)

    def feedback(self, feedback: GenerativeFeedback) -> int:
        return self.link.call("POST", "/generative/feedback", feedback, BiasVersionNumber).version


class HttpRules:
    def __init__(self, link: EnvironmentLink):
        self.link = link

    def query(self, request: RuleRequest) -> RuleResponse:
        return self.link.call("POST", "/tensorlogic/query", request, RuleResponse)


class HttpBridge:
    """Each environment's server, reached over HTTP; what each hosts comes from its health."""

    def __init__(
        self,
        topology: Topology,
        urls: dict[str, str],
        *,
        credential: str | None = None,
        services: dict[str, list[Service]] | None = None,
    ):
        self.topology = topology
        self.links = {
            name: EnvironmentLink(topology.environment(name), url, credential=credential)
            for name, url in urls.items()
        }
        # What each environment hosts: given, or asked once of each reachable server.
        self._services: dict[str, list[Service]] = dict(services or {})
        for name in self.links:
            if name not in self._services:
                try:
                    self._services[name] = self.health(name).services
                except errors.Unavailable:
                    self._services[name] = []

    def _link(self, capsule: Capsule, environment: str, service: Service) -> EnvironmentLink:
        env = self.topology.environment(environment)
        refuse_unless_admitted(env, capsule)
        link = self.links.get(environment)
        if link is None or service not in self._services.get(environment, []):
            raise errors.InvalidInput(
                f"{environment!r} hosts no {service!r}",
                field="service",
                allowed=self._services.get(environment, []),
            )
        return link

    def environments_hosting(self, service: Service) -> list[Environment]:
        return [
            self.links[name].environment
            for name, hosted in self._services.items()
            if service in hosted and name in self.links
        ]

    def is_up(self, environment: str) -> bool:
        try:
            self.health(environment)
        except errors.TrifectaError:
            return False
        return True

    def cognitive(self, capsule: Capsule, environment: str) -> CognitiveClient:
        return HttpCognitive(self._link(capsule, environment, "cognitive"))

    def context(self, capsule: Capsule, environment: str) -> ContextClient:
        return HttpContext(self._link(capsule, environment, "context"))

    def edge(self, capsule: Capsule, environment: str) -> EdgeClient:
        return HttpEdge(self._link(capsule, environment, "edge"))

    def generative(self, capsule: Capsule, environment: str) -> GenerativeClient:
        return HttpGenerative(self._link(capsule, environment, "generative"))

    def rules(self, capsule: Capsule, environment: str) -> RuleClient:
        return HttpRules(self._link(capsule, environment, "tensorlogic"))

    def health(self, environment: str) -> EnvironmentHealth:
        link = self.links.get(environment)
        if link is None:
            raise errors.Unavailable(f"no server for {environment!r}", field="environment")
        return link.call("GET", "/health", None, EnvironmentHealth)

    def served(self, environment: str) -> list[ServedRecord]:
        link = self.links.get(environment)
        return link.served() if link is not None else []

    def close(self) -> None:
        for link in self.links.values():
            link.close()
