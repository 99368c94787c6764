"""The orchestrator's tables in the control database: served requests and their charges."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("capsule_id", String(64), nullable=False, index=True),
    Column("run_id", String(40), nullable=True, index=True),
    Column("prompt", Text, nullable=False),
    Column("prompt_hash", String(32), nullable=False),
    Column("answer", Text, nullable=True),
    Column("route", String(32), nullable=False),
    Column("path", JSON, nullable=False),
    Column("environment", String(64), nullable=True),
    Column("verified", Boolean, nullable=True),
    Column("feedback", Boolean, nullable=True),
    Column("difficulty", Integer, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Index("ix_requests_capsule_prompt", "capsule_id", "prompt_hash"),
)

charges = Table(
    "charges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), ForeignKey("requests.id", ondelete="CASCADE"), index=True),
    Column("capsule_id", String(64), nullable=False, index=True),
    Column("capsule_kind", String(64), nullable=False),
    Column("environment", String(64), nullable=False, index=True),
    Column("layer", String(32), nullable=False, index=True),
    Column("model", String(64), nullable=False),
    Column("accelerator", String(32), nullable=True),
    Column("accelerator_seconds", Float, nullable=False),
    Column("usd_per_hour", Float, nullable=False),
    Column("usd", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
