"""The generative layer's expert placement over HTTP, for an operator (admin key only: the
placement is computed from every capsule's traffic):

- `GET /v1/generative/placement`: what this server's nodes run (the stored version, each
  node's experts and its load, each layer's load in its current window), the bounds the node
  count and the rebalances keep to, and the decisions log (the newest stored versions, each
  with its reason, the experts it moved and any change of node count);
- `POST /v1/generative/placement/rebalance`: a min-move rebalance now, with nodes added or
  removed (`GenerativeService.rebalance`), applied between two batches and stored, so every
  other process serving on placed nodes follows it.

Bad input is 422 naming the field (a negative count, a node the placement lacks or named
twice, a node count outside `min_nodes`..`max_nodes`, a layer the model lacks); a server
whose experts run in the model, or a rebalance with nothing recorded to place from, is 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.auth import Authenticator, Principal, admin_only
from trifecta.core.errors import Conflict, NotFound
from trifecta.generative.service import GenerativeService, LayerStatus
from trifecta.generative.store import LayerMove, NodeScaling, PlacementVersion

MAX_DECISIONS = 200


class NodeLoad(BaseModel):
    """One placement node: what it hosts and the routed tokens (token-expert pairs) it
    served, summed over the MoE layers."""

    node: int
    experts: list[list[int]] = Field(description="per MoE layer, the experts it hosts")
    window_tokens: int = Field(description="in the layers' current measuring windows")
    served_tokens: int = Field(description="since this process placed it (or added it)")


class PlacementBounds(BaseModel):
    """The settings every change of this server's placement keeps to (`[generative]`)."""

    min_nodes: int
    max_nodes: int
    slots_per_node: list[int] = Field(description="experts each node holds, per node")
    rebalance_threshold: float | None = Field(description="online rebalance past it; none: off")
    rebalance_target: float
    node_capacity_tokens_s: float | None = Field(
        description="routed tokens/s a node serves; none: the node count changes on demand only"
    )


class Decision(BaseModel):
    """A stored placement version: why it was made and what it changed."""

    version: int
    reason: str
    created_at: datetime | None
    nodes: int | None = Field(description="its node count (none: layers differ)")
    removed: list[int] = Field(description="nodes of the previous version it removed")
    moves: int = Field(description="expert weights shipped, summed over the layers")
    scratch_moves: int | None = Field(description="a from-scratch repack's, for comparison")
    max_mean: list[float] = Field(description="per layer, max/mean node load it reached")
    scaling: NodeScaling | None
    report: list[LayerMove]


class PlacementView(BaseModel):
    placed: bool = Field(description="false: the experts run in the model, not on nodes")
    version: int = Field(description="the stored version this server's nodes run (0: none)")
    newest_version: int = Field(
        description="the newest stored; a newer one is followed within placement_check_s"
    )
    nodes: int
    node_load: list[NodeLoad]
    layers: list[LayerStatus]
    bounds: PlacementBounds
    decisions: list[Decision] = Field(description="the newest stored versions, newest first")


class RebalanceBody(BaseModel):
    """`POST /v1/generative/placement/rebalance`: all empty rebalances every layer on the
    stored traffic with the nodes it has."""

    model_config = ConfigDict(extra="forbid")

    add: int = Field(default=0, ge=0, description="nodes to add (empty ones, then filled)")
    remove: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=256, description="node indices to remove"
    )
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        max_length=256,
        description="only these MoE layers (when no node is added or removed); none: all",
    )


class RebalanceAnswer(BaseModel):
    stored: bool = Field(description="false: nothing moved, so no version was stored")
    nodes: int
    decision: Decision


def decision_of(version: PlacementVersion) -> Decision:
    scratch = [r.scratch_moves for r in version.report if r.scratch_moves is not None]
    return Decision(
        version=version.version,
        reason=version.reason,
        created_at=version.created_at,
        nodes=version.nodes,
        removed=version.removed,
        moves=sum(r.moves for r in version.report),
        scratch_moves=sum(scratch) if scratch else None,
        max_mean=[round(r.after, 4) for r in version.report],
        scaling=version.scaling,
        report=version.report,
    )


def placement_view(service: GenerativeService, decisions: int) -> PlacementView:
    settings = service.settings
    # Each layer read once: a rebalance applied meanwhile changes a layer's nodes as a whole,
    # so a read never indexes past the nodes it saw (it may span two versions for a moment).
    snaps = [(p.placement.nodes, p.window()[0], p.node_tokens.copy()) for p in service.placed]
    nodes = min((len(part) for snap in snaps for part in snap), default=0)
    node_load = [
        NodeLoad(
            node=n,
            experts=[sorted(held[n]) for held, _, _ in snaps],
            window_tokens=sum(int(window[n]) for _, window, _ in snaps),
            served_tokens=sum(int(served[n]) for _, _, served in snaps),
        )
        for n in range(nodes)
    ]
    slots = service.placed[0].placement.cluster.slots if service.placed else []
    return PlacementView(
        placed=bool(service.placed),
        version=service.placement_version,
        newest_version=service.store.placement_version(),
        nodes=nodes,
        node_load=node_load,
        layers=service.placement_status(),
        bounds=PlacementBounds(
            min_nodes=settings.min_nodes,
            max_nodes=settings.max_nodes,
            slots_per_node=list(slots),
            rebalance_threshold=settings.rebalance_threshold,
            rebalance_target=settings.rebalance_target,
            node_capacity_tokens_s=settings.node_capacity_tokens_s,
        ),
        decisions=[decision_of(v) for v in service.store.recent_placements(decisions)],
    )


def generative_admin_routes(service: GenerativeService, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/generative", tags=["generative"])
    admin = Depends(admin_only(auth))

    @router.get("/placement")
    def placement(
        _: Principal = admin,
        decisions: int = Query(20, ge=1, le=MAX_DECISIONS, description="log entries"),
    ) -> PlacementView:
        """The expert placement this server's nodes run, their load, and the decisions log."""
        return placement_view(service, decisions)

    @router.post("/placement/rebalance")
    def rebalance(body: RebalanceBody, key: Principal = admin) -> RebalanceAnswer:
        """Rebalance every MoE layer with the fewest moves that reach `rebalance_target`,
        nodes added or removed; applied between batches and stored as a new version."""
        if not service.placed:
            raise Conflict(
                "this server runs the experts in the model: set expert_nodes or ray_address "
                "in [generative]",
                field="expert_nodes",
            )
        change = f", {body.add} node(s) added" if body.add else ""
        change += f", nodes {body.remove} removed" if body.remove else ""
        try:
            version = service.rebalance(
                add=body.add,
                remove=body.remove,
                layers=body.layers,
                reason=f"http ({key.key_id}){change}",
            )
        except NotFound as exc:  # nothing recorded to place from: a state, not the body
            raise Conflict(exc.message, field=exc.field) from None
        return RebalanceAnswer(
            stored=version.stored, nodes=service.nodes, decision=decision_of(version)
        )

    return router
