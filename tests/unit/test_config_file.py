"""The config file: defaults, human units, one-line errors naming the key, `whyprobe config`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from whyprobe.commands import main
from whyprobe.config import Config, load_config, parse_config
from whyprobe.errors import ConfigError

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "seed-config.yaml"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "whyprobe.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_file_and_empty_file_are_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(None) == Config()
    assert load_config(empty) == Config()
    defaults = Config()
    assert defaults.storage.ring_size == 16 * 2**20  # the same default as `trace` without --config
    assert defaults.security.bind == "127.0.0.1:8755"
    assert defaults.security.max_rows == 1000
    assert defaults.security.rate_limit_per_second == 100
    assert defaults.probes.families == ["cuda", "sched", "block", "net", "mem", "syscalls", "proc"]


def test_example_has_the_seed_shape_and_default_scalars(capsys) -> None:
    # GIVEN the printed example WHEN loaded THEN its scalar keys are the defaults
    assert main(["config", "--example"]) == 0
    text = capsys.readouterr().out
    config = parse_config(text)
    defaults = Config()
    for section in ("server", "storage", "security"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.probes.families == defaults.probes.families
    # AND every key of the seed file appears, in the seed's form (lists of mappings, quoted strings)
    data, seed = yaml.safe_load(text), yaml.safe_load(SEED.read_text())
    for section, keys in seed.items():
        if isinstance(keys, dict):
            assert set(keys) <= set(data[section]), section
    assert [(u["library"], u["symbol"], u["attach"]) for u in data["probes"]["uprobes"]] == [
        ("libcudart.so", "cudaLaunchKernel", "entry"), ("libcudart.so", "cudaDeviceSynchronize", "both")]
    assert data["probes"]["tracepoints"] == seed["probes"]["tracepoints"]
    assert '    - name: "block:block_rq_issue"\n      filter: "rwbs ~ \'.*W.*\'"\n' in text
    # AND the tools list names every tool the server has, each with its built-in description
    from whyprobe.server.app import tool_catalog

    catalog = tool_catalog()
    assert [(t["name"], t["description"], t.get("schema")) for t in data["tools"]] == [
        (name, description, "event" if event else None) for name, description, event in catalog]
    assert {"query_off_cpu_events", "resolve_causal_chain", "analyze_gpu_launch_latency"} <= {n for n, _, e in catalog if e}


def test_human_units_are_read() -> None:
    config = parse_config(
        "storage:\n  max_db_mb: 2GiB\n  retention_hours: 90m\n  ring_size: 512k\n"
        "security:\n  time_limit_ms: 5s\n  bind: ':9000'\n  max_output_bytes: 1MiB\n  tls_cert: c.pem\n  tls_key: k.pem\n"
        "probes:\n  tracepoints:\n  - name: sched:sched_switch\n    filter: prev_state != 0 && pid == 0x10 || comm == \"x\"\n"
    )
    assert config.storage.max_db_mb == 2048
    assert config.storage.retention_hours == 1.5
    assert config.storage.ring_size == 524288
    assert config.security.time_limit_ms == 5000
    assert config.security.bind == "127.0.0.1:9000"
    assert config.security.max_output_bytes == 2**20
    assert config.probes.tracepoints[0].conditions() == [[("prev_state", "!=", 0), ("pid", "==", 16)], [("comm", "==", "x")]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("storage:\n  max_db_mb: lots\n", 'storage.max_db_mb: expected a number of megabytes (e.g. 512) or a size like "2GiB", got "lots"'),
        (
            "security:\n  tokn: x\n",
            "unknown key security.tokn (expected one of: read_only, write_access, pid_filtering, cgroup_filtering, rate_limit_per_second, "
            "token_env, tls_cert, tls_key, bind, max_rows, time_limit_ms, max_output_bytes)",
        ),
        ("bogus: 1\n", "unknown key bogus (expected one of: server, probes, storage, tools, security)"),
        ("server:\n  transport: tcp\n", 'server.transport: expected one of: stdio, http, got "tcp"'),
        ("server:\n  read_only: maybe\n", 'server.read_only: expected true or false, got "maybe"'),
        ("storage:\n  ring_size: 3MiB\n", 'storage.ring_size: expected a power of two of at least 4KiB (e.g. 64MiB), got "3MiB"'),
        ("storage:\n  ring_size: huge\n", 'storage.ring_size: expected a size like 64MiB, 1GB or 512k, got "huge"'),
        ("probes:\n  uprobes:\n  - library: x\n", "probes.uprobes[0].symbol: missing required key"),
        ("probes:\n  uprobes:\n  - {library: x, symbol: y, attach: middle}\n", 'probes.uprobes[0].attach: expected one of: entry, return, both, got "middle"'),
        ("probes:\n  tracepoints:\n  - name: sched\n", 'probes.tracepoints[0].name: expected "category:event", e.g. sched:sched_switch, got "sched"'),
        (
            "probes:\n  tracepoints:\n  - {name: 'sched:sched_switch', filter: pid = 3}\n",
            '''probes.tracepoints[0].filter: expected conditions like "pid == 123", "prev_state != 0" or "rwbs ~ '.*W.*'", joined with && or ||, got "pid = 3"''',
        ),
        ("probes:\n  families: [cuda, gpu]\n", 'probes.families[1]: expected one of: cuda, sched, block, net, mem, syscalls, proc, stacks, wire, got "gpu"'),
        ("security:\n  max_rows: 20000\n", "security.max_rows: expected a number <= 10000, got 20000"),
        ("security:\n  tls_cert: a.pem\n", 'security.tls_cert: expected tls_cert and tls_key together (both or neither), got "a.pem"'),
        ("security:\n  bind: nowhere\n", 'security.bind: expected an address like :9464, 127.0.0.1:9464 or [::1]:9464, got "nowhere"'),
        ("security:\n  pid_filtering: [1, x]\n", 'security.pid_filtering[1]: expected a whole number, got "x"'),
        ("storage:\n  max_events_per_second: -5\n", "storage.max_events_per_second: expected a number >= 0, got -5"),
        ("storage: [1, 2]\n", "storage: expected a mapping of keys"),
        ("a: [\n", "invalid YAML at line 2, column 1: expected the node content, but found '<stream end>'"),
        ("server:\n  name: a\n  name: b\n", "line 3: key 'name' appears twice"),
        ("- 1\n", "expected a mapping of sections (server, probes, storage, tools, security) at the top level"),
    ],
)
def test_errors_are_one_line_naming_key_and_form(text: str, message: str) -> None:
    assert _error(text) == f"config error in whyprobe.yaml: {message}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config file not found: .*nope\.yaml$"):
        load_config(tmp_path / "nope.yaml")


def test_tool_names_are_checked_against_the_server() -> None:
    tools = parse_config("tools:\n  disable: [run_sql]\n  descriptions: {get_chek: x}\n").tools
    assert tools.allowed("get_check") and not tools.allowed("run_sql")
    with pytest.raises(ConfigError, match=r"^tools.descriptions: unknown tool 'get_chek' \(expected one of: get_check, run_sql\)$"):
        tools.check_names(("run_sql", "get_check"))


def test_security_maps_onto_the_server_settings() -> None:
    from whyprobe.server.security import SecuritySettings

    security = parse_config("security:\n  pid_filtering: [42]\n  cgroup_filtering: [7]\n  max_rows: 50\n").security
    security_settings = SecuritySettings(**security.settings_kwargs())
    assert security_settings.pid_filter == [42]
    assert security_settings.cgroup_filter == [7]
    assert security_settings.max_rows == 50
    assert security_settings.token_env == "WHYPROBE_MCP_TOKEN"


def test_cgroup_paths_resolve_to_their_inode() -> None:
    security = parse_config("security:\n  cgroup_filtering: [7, /sys/fs/cgroup]\n").security
    import os

    assert security.cgroup_ids() == [7, os.stat("/sys/fs/cgroup").st_ino]
    missing = parse_config("security:\n  cgroup_filtering: [no/such.slice]\n").security
    with pytest.raises(ConfigError, match=r"^security.cgroup_filtering: no such cgroup: /sys/fs/cgroup/no/such.slice$"):
        missing.cgroup_ids()


def test_cli_example_and_check(tmp_path: Path, capsys) -> None:
    # WHEN printing the example THEN it checks clean
    assert main(["config", "--example"]) == 0
    out = tmp_path / "whyprobe.yaml"
    out.write_text(capsys.readouterr().out)
    assert main(["config", "--check", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: OK\n"
    # WHEN a file has a bad value THEN one line on stderr and exit 1
    out.write_text("storage:\n  max_db_mb: lots\n")
    assert main(["config", "--check", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f'whyprobe: config error in {out}: storage.max_db_mb: expected a number of megabytes (e.g. 512) or a size like "2GiB", got "lots"\n'
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "whyprobe: give exactly one of --example or --check FILE\n"
