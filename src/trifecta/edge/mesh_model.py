"""The edge mesh as a `core.protocols.LanguageModel`, with a cloud fallback.

The orchestrator hands this to whatever needs a language model: light requests of an allowed
capsule are served on an edge node; anything else, and any request whose nodes fail, goes to
`fallback` (the cloud tier), so the caller gets generations either way. `last_result` tells
which path served the latest call and why.
"""

from __future__ import annotations

from collections.abc import Sequence

from trifecta.core.errors import Unavailable
from trifecta.core.protocols import Generation, LanguageModel
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.offload import OffloadResult
from trifecta.fleet.capsules import Capsule


class EdgeMeshModel:
    def __init__(
        self,
        mesh: EdgeMesh,
        *,
        fallback: LanguageModel | None,
        capsule: Capsule | None = None,
        name: str = "edge-mesh",
    ):
        self.mesh = mesh
        self.fallback = fallback
        self.capsule = capsule
        self._name = name
        self.last_result: OffloadResult | None = None

    @property
    def name(self) -> str:
        return self._name

    def for_capsule(self, capsule: Capsule) -> EdgeMeshModel:
        return EdgeMeshModel(self.mesh, fallback=self.fallback, capsule=capsule, name=self._name)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        options = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_logprobs": top_logprobs,
            "stop": list(stop),
        }
        result = self.mesh.offload(self.capsule, prompts, **options)
        self.last_result = result
        if result.offloaded and result.generations is not None:
            return result.generations
        if self.fallback is None:
            raise Unavailable(
                f"the edge did not serve the request ({result.reason}: {result.detail}) "
                "and no fallback model is configured",
                field="model",
            )
        return self.fallback.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            stop=stop,
        )
