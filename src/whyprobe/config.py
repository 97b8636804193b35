"""The `--config whyprobe.yaml` file: pydantic models, defaults, one-line errors.

Every field has a default, so an empty file (or no file) is a valid config.
Durations and sizes accept the strings people type (`5s`, `64MiB`, see
`units.py`). `load_config` turns every problem (missing file, YAML syntax,
duplicate or unknown key, bad value) into one `ConfigError` line naming the
key path and the expected form. The seed's published file is read as typed;
`config_example.example_yaml()` prints one in the same shape, commented.
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from whyprobe.errors import ConfigError
from whyprobe.tpfilter import FILTER_FORM, parse_filter
from whyprobe.units import SIZE_FORM, UnitError, parse_duration_ns, parse_hostport, parse_size

__all__ = [
    "Config",
    "ServerConfig",
    "ProbesConfig",
    "UprobeSpec",
    "TracepointSpec",
    "StorageConfig",
    "ToolsConfig",
    "SecurityConfig",
    "PROBE_FAMILIES",
    "load_config",
    "parse_config",
    "parse_filter",
    "tool_plan",
]

PROBE_FAMILIES = ("cuda", "sched", "block", "net", "mem", "syscalls", "proc", "stacks", "wire")
Family = Literal["cuda", "sched", "block", "net", "mem", "syscalls", "proc", "stacks", "wire"]


def _size_bytes(value: Any) -> int:
    return parse_size(value)


def _megabytes(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise UnitError("expected a number of megabytes (e.g. 512), 0 for no limit")
        return float(value)
    try:
        return parse_size(value, bare_unit="mib") / 2**20
    except UnitError:
        raise UnitError('expected a number of megabytes (e.g. 512) or a size like "2GiB"') from None


def _hours(value: Any) -> float:
    try:
        return parse_duration_ns(value, bare_unit="h") / 3.6e12
    except UnitError:
        raise UnitError("expected a number of hours (e.g. 24) or a duration like 90m, 0 to keep everything") from None


def _milliseconds(value: Any) -> int:
    try:
        return round(parse_duration_ns(value, bare_unit="ms") / 1e6)
    except UnitError:
        raise UnitError("expected a number of milliseconds (e.g. 2000) or a duration like 2s") from None


def _precision_ms(value: Any) -> int:
    try:
        ns = parse_duration_ns(value, bare_unit="ms")
    except UnitError:
        raise UnitError("expected a whole number of milliseconds (e.g. 1), 0 for full nanosecond timestamps") from None
    if ns % 1_000_000:
        raise UnitError("expected a whole number of milliseconds (e.g. 1), 0 for full nanosecond timestamps")
    return ns // 1_000_000


def _bind(value: Any) -> str:
    host, port = parse_hostport(str(value))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Bytes = Annotated[int, BeforeValidator(_size_bytes)]
Megabytes = Annotated[float, BeforeValidator(_megabytes)]
Hours = Annotated[float, BeforeValidator(_hours)]
Milliseconds = Annotated[int, BeforeValidator(_milliseconds)]
PrecisionMs = Annotated[int, BeforeValidator(_precision_ms)]
BindAddress = Annotated[str, BeforeValidator(_bind)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _never_writes(allowed: bool) -> Any:
    def check(value: bool) -> bool:
        if value != allowed:
            raise ValueError(f"whyprobe never writes to what it traces; expected {str(allowed).lower()}")
        return value

    return check


class ServerConfig(_Section):
    name: str = Field("whyprobe", description="Server name the MCP initialize answer reports.")
    version: str | None = Field(None, description="Server version the MCP initialize answer reports (null: whyprobe's own version).")
    transport: Literal["stdio", "http"] = Field("stdio", description="Default transport of `whyprobe mcp`: stdio or http (streamable HTTP).")
    read_only: Annotated[bool, AfterValidator(_never_writes(True))] = Field(
        True, description="Always true: every tool is read-only (false is refused)."
    )


class UprobeSpec(_Section):
    library: str = Field(description="Library name or path, e.g. libnccl.so.2.")
    symbol: str = Field(description="Exported function to probe.")
    attach: Literal["entry", "return", "both"] = Field("both", description="entry, return or both (duration).")


_TP_NAME = re.compile(r"^[a-z0-9_]+:[a-z0-9_]+$")
class TracepointSpec(_Section):
    name: str = Field(description='Tracepoint as "category:event", e.g. sched:sched_switch.')
    filter: str = Field("", description=f"Optional filter: {FILTER_FORM}.")

    @model_validator(mode="after")
    def _check(self) -> "TracepointSpec":
        if not _TP_NAME.match(self.name):
            raise ValueError('name: expected "category:event", e.g. sched:sched_switch')
        try:
            parse_filter(self.filter)
        except UnitError as exc:
            raise ValueError(f"filter: {exc}") from None
        return self

    def conditions(self) -> list[list[tuple[str, str, int | str]]]:
        """The filter as OR of ANDs of (field, op, value)."""
        return parse_filter(self.filter)


class ProbesConfig(_Section):
    families: list[Family] = Field(
        ["cuda", "sched", "block", "net", "mem", "syscalls", "proc"],
        description=f"Probe families to enable; any of: {', '.join(PROBE_FAMILIES)}.",
    )
    uprobes: list[UprobeSpec] = Field(
        [],
        description="Extra uprobes (source CUSTOM, op = index in this list).",
        json_schema_extra={"example": [
            {"library": "libcudart.so", "symbol": "cudaLaunchKernel", "attach": "entry"},
            {"library": "libcudart.so", "symbol": "cudaDeviceSynchronize", "attach": "both"},
        ]},
    )
    tracepoints: list[TracepointSpec] = Field(
        [],
        description="Extra tracepoints, each with an optional filter.",
        json_schema_extra={"example": [
            {"name": "sched:sched_switch", "filter": "prev_pid != 0 && next_pid != 0"},
            {"name": "block:block_rq_issue", "filter": "rwbs ~ '.*W.*'"},
        ]},
    )
    libraries: list[str] = Field([], description="Extra directories to search for CUDA libraries.")


class StorageConfig(_Section):
    backend: Literal["sqlite", "columnar", "duckdb"] = Field(
        "sqlite", description="sqlite, or columnar (= duckdb): also write a DuckDB columnar copy beside the trace."
    )
    retention_hours: Hours = Field(0, description="Prune events older than this (hours, or e.g. 90m); 0 keeps all.")
    precision_ms: PrecisionMs = Field(0, description="Round stored event timestamps down to this many ms; 0 keeps ns. Durations stay exact.")
    max_events_per_second: int = Field(0, ge=0, description="Keep at most this many events/s (counted as rate drops); 0 = no cap.")
    max_db_mb: Megabytes = Field(0, description="Prune oldest events beyond this database size (MiB); 0 = no limit.")
    # The one default: `trace` without --config and without this key uses it too.
    ring_size: Bytes = Field("16MiB", description=f"Kernel ring buffer size: {SIZE_FORM}, a power of two.")

    @model_validator(mode="after")
    def _check(self) -> "StorageConfig":
        if self.ring_size < 4096 or self.ring_size & (self.ring_size - 1):
            raise ValueError("ring_size: expected a power of two of at least 4KiB (e.g. 64MiB)")
        return self


class ToolSpec(_Section):
    name: str = Field(description="An MCP tool of `whyprobe mcp`.")
    description: str | None = Field(None, description="Its description (null: the built-in one).")
    output: Literal["event"] | None = Field(
        None, alias="schema", description='"event": structured output carries an `events` list of event objects (declared as the outputSchema).'
    )


class ToolsConfig(_Section):
    enable: list[str] = Field([], description="Only these MCP tools (empty: all).")
    disable: list[str] = Field([], description="MCP tools to hide.")
    descriptions: dict[str, str] = Field({}, description="Override MCP tool descriptions, by tool name.")

    def check_names(self, known: list[str] | tuple[str, ...] | frozenset[str]) -> None:
        """ConfigError naming the first tool name here that the server does not have."""
        for key, names in (("enable", self.enable), ("disable", self.disable), ("descriptions", list(self.descriptions))):
            for name in names:
                if name not in known:
                    raise ConfigError(f"tools.{key}: unknown tool {name!r} (expected one of: {', '.join(sorted(known))})")

    def allowed(self, name: str) -> bool:
        return (not self.enable or name in self.enable) and name not in self.disable


def _tools_form(value: Any) -> str:
    return "tools-list" if isinstance(value, list) else "tools-map"


# The seed's form is a list of {name, description, schema}: exactly the tools served.
# The mapping {enable, disable, descriptions} adjusts the built-in set instead.
Tools = Annotated[
    Annotated[list[ToolSpec], Tag("tools-list")] | Annotated[ToolsConfig, Tag("tools-map")],
    Discriminator(_tools_form),
]


def tool_plan(tools: list[ToolSpec] | ToolsConfig, known: list[str]) -> dict[str, ToolSpec]:
    """The tools to serve, by name, in order, each with its configured description and output shape.

    ConfigError (one line) for a name the server does not have or a name listed twice.
    """
    if isinstance(tools, ToolsConfig):
        tools.check_names(known)
        return {n: ToolSpec(name=n, description=tools.descriptions.get(n)) for n in known if tools.allowed(n)}
    plan: dict[str, ToolSpec] = {}
    for i, spec in enumerate(tools):
        if spec.name not in known:
            raise ConfigError(f"tools[{i}].name: unknown tool {spec.name!r} (expected one of: {', '.join(sorted(known))})")
        if spec.name in plan:
            raise ConfigError(f"tools[{i}].name: {spec.name!r} is listed twice")
        plan[spec.name] = spec
    return plan


PidFiltering = Annotated[
    Annotated[list[int], Tag("pid-list")] | Annotated[bool, Tag("pid-switch")],
    Discriminator(lambda v: "pid-list" if isinstance(v, list) else "pid-switch"),
]
_TAGS = ("tools-list", "tools-map", "pid-list", "pid-switch")


class SecurityConfig(_Section):
    read_only: Annotated[bool, AfterValidator(_never_writes(True))] = Field(
        True, description="Always true: read-only access only (false is refused)."
    )
    write_access: Annotated[bool, AfterValidator(_never_writes(False))] = Field(
        False, description="Always false: no tool writes (true is refused)."
    )
    pid_filtering: PidFiltering = Field(
        False,
        description="true: trace and serve only the traced processes (their pids and children); a list: only these pids; false: no pid filter.",
    )
    cgroup_filtering: list[int | str] = Field([], description="Only these cgroups (ids or /sys/fs/cgroup paths).")
    rate_limit_per_second: float = Field(100, gt=0, description="MCP requests per second per client.")
    token_env: str = Field("WHYPROBE_MCP_TOKEN", description="Env var holding the bearer token (required off loopback).")
    tls_cert: str | None = Field(None, description="TLS certificate (PEM) for --http; needs tls_key.")
    tls_key: str | None = Field(None, description="TLS private key (PEM) for --http; needs tls_cert.")
    bind: BindAddress = Field("127.0.0.1:8755", description="HTTP bind address (HOST:PORT).")
    max_rows: int = Field(1000, ge=1, le=10_000, description="Row cap per query (at most 10000).")
    time_limit_ms: Milliseconds = Field(2000, description="Time limit per query (ms, or e.g. 2s).")
    max_output_bytes: Bytes = Field(256_000, description="Output cap per tool call (bytes, or e.g. 1MiB).")

    @model_validator(mode="after")
    def _check(self) -> "SecurityConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: expected tls_cert and tls_key together (both or neither)")
        if not 10 <= self.time_limit_ms <= 600_000:
            raise ValueError("time_limit_ms: expected between 10ms and 10m")
        if not 1024 <= self.max_output_bytes <= 64_000_000:
            raise ValueError("max_output_bytes: expected between 1KB and 64MB")
        return self

    def cgroup_ids(self) -> list[int]:
        """cgroup_filtering as cgroup v2 ids (a cgroup's id is its directory's inode number)."""
        ids = []
        for item in self.cgroup_filtering:
            if isinstance(item, int):
                ids.append(item)
                continue
            path = Path(item) if item.startswith("/sys/fs/cgroup") else Path("/sys/fs/cgroup") / item.lstrip("/")
            try:
                ids.append(os.stat(path).st_ino)
            except OSError:
                raise ConfigError(f"security.cgroup_filtering: no such cgroup: {path}") from None
        return ids

    def settings_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for server.security.SecuritySettings (its field names)."""
        return {
            "read_only": self.read_only,
            "pid_filter": list(self.pid_filtering) if isinstance(self.pid_filtering, list) else [],
            "cgroup_filter": self.cgroup_ids(),
            "rate_limit_per_second": self.rate_limit_per_second,
            "token_env": self.token_env,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "bind": self.bind,
            "max_rows": self.max_rows,
            "time_limit_ms": self.time_limit_ms,
            "max_output_bytes": self.max_output_bytes,
        }


class Config(_Section):
    """A whole whyprobe config file."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="MCP server identity and transport.")
    probes: ProbesConfig = Field(default_factory=ProbesConfig, description="What to trace.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where and how much to keep.")
    tools: Tools = Field(default_factory=ToolsConfig, description="Which MCP tools to serve, with their descriptions.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="Limits for `whyprobe mcp`.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"line {line}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike | None) -> Config:
    """Read and validate a config file; None gives the defaults. Raises one-line ConfigError."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(text, name=str(p))


def parse_config(text: str, name: str = "<config>") -> Config:
    """Validate config text (YAML); errors read `config error in NAME: key.path: ...`."""
    prefix = f"config error in {name}"
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefix}: {_yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of sections (server, probes, storage, tools, security) at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{prefix}: {_first_error(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [part for part in err["loc"] if part not in ("function-after", "function-before", *_TAGS)]
    kind = err["type"]
    message = str(err.get("ctx", {}).get("error", "")) if kind == "value_error" else ""
    if kind == "value_error" and re.match(r"^\w+: ", message) and _model_at(loc) is not None:
        # a model-level check names its own field ("ring_size: expected ...")
        field, _, message = message.partition(": ")
        loc = [*loc, field]
    path = _path(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        keys = ", ".join(f.alias or name for name, f in parent.model_fields.items()) if parent else ""
        return f"unknown key {path} (expected one of: {keys})"
    if kind == "missing":
        return f"{path}: missing required key"
    if not message:
        message = _expected(err)
    got = err.get("input")
    if kind == "value_error" and _model_at(loc) is None and isinstance(got, dict) and loc and loc[-1] in got:
        got = got[loc[-1]]
    if isinstance(got, (dict, list)) or got is None and kind == "value_error":
        return f"{path}: {message}"
    return f"{path}: {message}, got {_show(got)}"


def _expected(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "literal_error":
        return f"expected one of: {ctx.get('expected', '').replace(' or ', ', ').replace(chr(39), '')}"
    if kind.startswith("bool"):
        return "expected true or false"
    if kind.startswith("int"):
        return "expected a whole number"
    if kind.startswith(("float", "decimal")):
        return "expected a number"
    if kind.startswith("string"):
        return "expected a string"
    if kind.startswith("list"):
        return "expected a list"
    if kind.startswith(("dict", "model")):
        return "expected a mapping of keys"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        key = {">": "gt", ">=": "ge", "<": "lt", "<=": "le"}[bounds[kind]]
        return f"expected a number {bounds[kind]} {ctx.get(key)}"
    return err["msg"].lower()


def _model_at(loc: list) -> type[BaseModel] | None:
    model: Any = Config
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:
            return None
        # A list item (next part an index) is the model inside the list, else the field's own model.
        models = _models_in(fields[part].annotation, inside_list=i + 1 < len(loc) and isinstance(loc[i + 1], int))
        model = models[0] if models else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _models_in(annotation: Any, inside_list: bool) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold, looking through Annotated, unions and (if asked) lists."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is list:
        return _models_in(typing.get_args(annotation)[0], False) if inside_list else []
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        args = args[:1]
    return [m for a in args for m in _models_in(a, inside_list)]


def _path(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."
