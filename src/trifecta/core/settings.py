"""Settings: `TRIFECTA_*` environment variables over an optional `trifecta.toml`.

The top-level table of `trifecta.toml` holds the shared settings below; a layer keeps its
own settings in a table named after it (`[context]`, `[cognitive]`, ...) read by a
`LayerSettings` subclass with the prefix `TRIFECTA_<LAYER>_`.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from trifecta.core.embed_compiled import engine_choice, precision_choice
from trifecta.core.errors import InvalidInput

Phase = Literal["dev", "pilot", "full"]
PHASES: tuple[Phase, ...] = ("dev", "pilot", "full")


def config_file() -> Path:
    """The TOML file read for settings: `$TRIFECTA_CONFIG`, else `./trifecta.toml`."""
    return Path(os.environ.get("TRIFECTA_CONFIG", "trifecta.toml"))


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trifecta"


class _TomlSettings(BaseSettings):
    """Base that adds the TOML file (optionally one table of it) below the environment."""

    toml_section: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        header = (cls.toml_section,) if cls.toml_section else None
        path = config_file()
        try:  # the source reads the file here: a syntax error would be a 30-line traceback
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path, toml_table_header=header)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"malformed TOML in {path}: {exc}", field=path.name) from None
        except OSError as exc:  # a directory, or unreadable
            raise InvalidInput(f"cannot read {path}: {exc.strerror}", field=path.name) from None
        return (init_settings, env_settings, toml)


class Settings(_TomlSettings):
    """What every part of Trifecta shares."""

    model_config = SettingsConfigDict(env_prefix="TRIFECTA_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir, description="SQLite database and artifacts"
    )
    database_url: str | None = Field(
        default=None, description="control database; default: SQLite in the data directory"
    )
    redis_url: str | None = Field(default=None, description="shared cache; none: in-process only")
    phase: Phase = "dev"
    topology: Path | None = Field(
        default=None, description="topology YAML; default: the shipped one"
    )
    fleet: Path | None = Field(default=None, description="fleet YAML; default: the shipped one")
    model_endpoint: str | None = Field(
        default=None, description="OpenAI-compatible base URL used by the context roles"
    )
    model_name: str | None = None
    model_api_key: str | None = None
    ray_address: str | None = Field(default=None, description="Ray cluster for multi-node serving")
    shard_urls: dict[str, str] = Field(
        default_factory=dict,
        description="the database of each environment's context shards (`[shard_urls]`: "
        "environment name = URL); an environment not named keeps them in "
        "<data_dir>/environments/<name>/context.db. These are the only places a shard moves to",
    )
    federation_credential: str | None = Field(
        default=None,
        description="the bearer token environments of a federation present to one another",
    )
    torch_threads: int = Field(
        default=1,
        ge=1,
        description="intra-op threads for the shipped models; more than one "
        "made small-model decode steps 50-100x slower when the cores are shared",
    )
    sqlite_cache_kib: int = Field(
        default=512,
        ge=16,
        description="page cache of each SQLite connection, in KiB (SQLite's own default: "
        "2,000); an engine's pool keeps up to 30 connections, each its cache for its life",
    )
    sqlite_soft_heap_mib: int = Field(
        default=64,
        ge=0,
        description="all of a process's SQLite memory, in MiB, past which connections reuse "
        "their cached pages instead of growing (a soft limit; 0: none)",
    )
    served_log_records: int = Field(
        # ~104 bytes a record (measured): 0.2 MB an environment (was a fixed 100,000, 10 MB). The
        # log is for reading placement back (tests, an operator's look at the last calls);
        # the served and refused counts cover every record.
        default=2_000,
        ge=1,
        description="records of what an environment served or refused kept in memory "
        "(oldest dropped first; its served and refused counts cover every record)",
    )
    hop_log_hops: int = Field(
        # ~120 bytes a hop (measured): about 0.24 MB (was a fixed 50,000, 6 MB). Only tests
        # read it; a run's report reads each request's own hops.
        default=2_000,
        ge=1,
        description="the sender's trace of calls into environments kept in memory (oldest "
        "dropped first)",
    )
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _embed_engine(self) -> Settings:
        # The embedder reads TRIFECTA_EMBED_ENGINE and _PRECISION at its first embedding,
        # minutes into a run; a bad value fails here, at start-up, naming it.
        engine_choice()
        precision_choice()
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'trifecta.db'}"

    def shard_url(self, environment: str) -> str:
        """Where an environment keeps the context shards of the domains it homes."""
        configured = self.shard_urls.get(environment)
        if configured:
            return configured
        return f"sqlite:///{self.data_dir / 'environments' / environment / 'context.db'}"

    def artifacts_dir(self, *parts: str) -> Path:
        """A folder under the data directory, created on demand."""
        path = self.data_dir.joinpath("artifacts", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


class LayerSettings(_TomlSettings):
    """Base for a layer's own settings: subclass with `toml_section = "<layer>"` and
    `model_config = SettingsConfigDict(env_prefix="TRIFECTA_<LAYER>_", extra="ignore")`."""


@lru_cache(maxsize=1)
def get_settings(**overrides: Any) -> Settings:
    """The process-wide settings (cached; `get_settings.cache_clear()` re-reads them)."""
    return Settings(**overrides)
