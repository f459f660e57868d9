"""The validated configuration: agent settings, systems and the whole file.

Every setting is declared once here (or in :mod:`agent.config.entities`) with its default
and a description; :mod:`agent.config.reference` turns them into docs/configuration.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from agent.config.base import (
    RESERVED_NAMES,
    FrozenModel,
    Name,
    Subproblem,
    check_name,
    context,
    fail,
    fail_many,
)
from agent.config.conninfo import conninfo_problem, with_password
from agent.config.durations import Duration, Listen, ListenAddress, parse_listen
from agent.config.entities import EntityConfig
from agent.config.secrets import check_password_file, check_secret_reference, read_password_file
from agent.events import TableId

TWO_SYSTEMS = "must name exactly two systems (found {})"

PasswordFile = Annotated[Path, AfterValidator(check_password_file)]


def _system_name(value: str) -> str:
    # Direction names (<a>_to_<b>_manual) must fit the checkpoints table's varchar(100).
    check_name(value, "system names", limit=40)
    if value in RESERVED_NAMES:
        fail(f"{value} is a reserved word and cannot name a system")
    return value


SystemName = Annotated[str, AfterValidator(_system_name)]


class BatchSettings(FrozenModel):
    """How source transactions are grouped into one target transaction."""

    max_rows: int = Field(5000, ge=1, description="Rows per target transaction at most.")
    max_delay: Duration = Field(
        0.020, description="How long a batch may wait for more source transactions."
    )


class AgentSettings(FrozenModel):
    """Settings of the agent itself."""

    name: str = Field(
        description="Names the agent's slot, publication, origin and metric labels: "
        "a-z, 0-9 and _, at most 40 characters. Required."
    )
    state_schema: str = Field(
        "cdc_agent",
        description="Schema (PostgreSQL) / database (MySQL) the agent owns on each system "
        "for checkpoints, key maps, conflicts and dead letters.",
    )
    metrics_listen: Listen = Field(
        default_factory=lambda: parse_listen("127.0.0.1:9464"),
        description='"HOST:PORT" serving /metrics, /livez and /readyz (default '
        "127.0.0.1:9464; port 0 picks a free port).",
    )
    web_config_file: Path | None = Field(
        None,
        description="Exporter-toolkit web config (tls_server_config, basic_auth_users) for "
        "the metrics endpoint, as node_exporter's --web.config.file. Default: plain HTTP, "
        "no auth.",
    )
    heartbeat_interval: Duration = Field(
        10.0,
        gt=0,
        description="How often a heartbeat is written to measure lag and keep "
        "an idle slot advancing.",
    )
    batch: BatchSettings = Field(
        default_factory=lambda: BatchSettings.model_validate({}),
        description="{max_rows, max_delay}: batching.",
    )
    ha: str | None = Field(
        None,
        description="A system name: instances take an advisory lock there and only the "
        "holder runs (high availability). Default: no election.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "the agent name", limit=40)

    @field_validator("state_schema")
    @classmethod
    def _state_schema(cls, value: str) -> str:
        return check_name(value, "the state schema")

    @field_validator("ha")
    @classmethod
    def _ha(cls, value: str | None, info: ValidationInfo) -> str | None:
        systems = context(info).systems
        if value is not None and value not in systems:
            fail(f"must be one of {', '.join(systems)}")
        return value


class _Credentials(FrozenModel):
    """A password from ``password: ${env:NAME}`` or ``password_file: PATH``."""

    password_file: PasswordFile | None = Field(
        None,
        description="File holding the password (one trailing newline is ignored); must not be "
        "readable by group or others. E.g. ${env:CREDENTIALS_DIRECTORY}/crm.",
    )
    password: SecretStr | None = Field(
        None,
        validate_default=True,
        description="Only as ${env:NAME}: a literal password in the file is refused. "
        "Default: none (or the one in password_file).",
    )

    @field_validator("password", mode="before")
    @classmethod
    def _password(cls, value: object, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            path = info.data.get("password_file")
            return read_password_file(path) if path is not None else None
        if isinstance(value, SecretStr):
            return value
        secret = check_secret_reference(value)
        if info.data.get("password_file") is not None:
            fail("give password or password_file, not both")
        return secret


class PostgresSystem(_Credentials):
    """A PostgreSQL database (logical decoding with pgoutput)."""

    engine: Literal["postgresql"] = Field(description="postgresql or mysql.")
    dsn: str = Field(
        description="libpq connection string (key=value or postgresql:// URI) without "
        'password, e.g. "host=crm-db dbname=crm user=cdc_agent sslmode=verify-full".'
    )

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        problem = conninfo_problem(value)
        if problem:
            fail(problem)
        return value

    def conninfo(self) -> str:
        """The connection string with the password, for connecting only: never log it."""
        secret = self.password.get_secret_value() if self.password else None
        return with_password(self.dsn, secret)


class TlsSettings(FrozenModel):
    """TLS for a MySQL/MariaDB connection."""

    ca: Path | None = Field(None, description="CA certificate file (PEM).")
    cert: Path | None = Field(None, description="Client certificate file (PEM).")
    key: Path | None = Field(None, description="Client private key file (PEM).")
    verify_identity: bool = Field(
        True, description="Check that the server certificate names the host."
    )


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        fail("must be an IANA time zone name like UTC or Europe/Berlin")
    return value


class MysqlSystem(_Credentials):
    """A MySQL 8 or MariaDB 10.6+ database (row-based binlog)."""

    engine: Literal["mysql"] = Field(description="postgresql or mysql.")
    host: str = Field(min_length=1, description="Server host name or address.")
    port: int = Field(3306, ge=1, le=65535, description="Server TCP port.")
    database: str = Field(min_length=1, description="Database holding the mapped tables.")
    user: str = Field(min_length=1, description="User name (needs REPLICATION SLAVE/CLIENT).")
    server_id: int = Field(
        ge=1,
        le=2**32 - 1,
        description="Unique replica id for the binlog connection (1..4294967295). Required.",
    )
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        "UTC", description="IANA zone in which DATETIME values are interpreted."
    )
    tls: TlsSettings | None = Field(None, description="{ca, cert, key, verify_identity}.")
    connect_timeout: Duration = Field(10.0, gt=0, description="Connection timeout.")


SystemConfig = Annotated[PostgresSystem | MysqlSystem, Field(discriminator="engine")]
"""One database: PostgreSQL or MySQL/MariaDB, chosen by ``engine``."""


@dataclass(frozen=True, slots=True)
class Direction:
    """One replication direction: changes on ``source`` are applied to ``target``."""

    name: str
    source: str
    target: str


class Config(FrozenModel):
    """The whole configuration file."""

    agent: AgentSettings = Field(description="Settings of the agent itself.")
    systems: dict[SystemName, SystemConfig] = Field(
        description="Exactly two databases by name; the first listed is the default tie "
        "winner and the key side of value maps."
    )
    entities: dict[Name, EntityConfig] = Field(
        description="What is replicated, by entity name ([a-z0-9_])."
    )
    _path: Path = PrivateAttr(default=Path("<memory>"))
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("systems")
    @classmethod
    def _two_systems(
        cls, value: dict[str, PostgresSystem | MysqlSystem]
    ) -> dict[str, PostgresSystem | MysqlSystem]:
        if len(value) != 2:
            fail(TWO_SYSTEMS.format(len(value)))
        return value

    @field_validator("entities")
    @classmethod
    def _some_entities(cls, value: dict[str, EntityConfig]) -> dict[str, EntityConfig]:
        if not value:
            fail("must define at least one entity")
        problems: list[Subproblem] = []
        owner: dict[tuple[str, TableId], str] = {}
        for name, entity in value.items():
            for side, ref in entity.sides.items():
                other = owner.setdefault((side, ref.table), name)
                if other != name:
                    problems.append(
                        (
                            (name, side, "table"),
                            f"table {ref.table} is already mapped by entity {other}",
                        )
                    )
        if problems:
            fail_many(problems)
        return value

    @property
    def path(self) -> Path:
        """The file this configuration was read from."""
        return self._path

    def where(self, dotted_path: str) -> str:
        """``file:line`` of ``dotted_path`` (or of its nearest parent present in the file)."""
        path = dotted_path
        while path:
            if path in self._lines:
                return f"{self._path}:{self._lines[path]}"
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return f"{self._path}:1"

    def directions(self) -> list[Direction]:
        """Both directions, the first system's outgoing one first."""
        names = list(self.systems)
        return [Direction(f"{s}_to_{t}", s, t) for s in names for t in names if s != t]

    def other(self, system: str) -> str:
        """The system that is not ``system``."""
        return next(name for name in self.systems if name != system)

    def attach_source(self, path: Path, lines: dict[str, int]) -> None:
        """Record where the configuration came from (called by the loader)."""
        self._path = path
        self._lines = dict(lines)


__all__ = [
    "AgentSettings",
    "BatchSettings",
    "Config",
    "Direction",
    "ListenAddress",
    "MysqlSystem",
    "PostgresSystem",
    "SystemConfig",
    "TlsSettings",
]
