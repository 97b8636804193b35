"""`whyprobe demo` scenarios: real workloads traced for real, or replays of recordings of them.

    run_scenario(name, out, *, console, duration_s) -> Path   trace it live (root + eBPF)
    run_replay(name, out, *, force=False) -> Path             decompress its recording
    tracing_unavailable() -> str | None                       why a live run cannot work here
"""

from whyprobe.demo.scenarios.catalog import DEFAULT, PROBES, SCENARIOS, Scenario, document, get
from whyprobe.demo.scenarios.live import DEFAULT_DURATION_S, RunFacts, check_out, record, run_scenario
from whyprobe.demo.scenarios.replay import origin, replay_path, run_replay, tracing_unavailable

__all__ = [
    "DEFAULT",
    "DEFAULT_DURATION_S",
    "PROBES",
    "SCENARIOS",
    "RunFacts",
    "Scenario",
    "check_out",
    "document",
    "get",
    "origin",
    "record",
    "replay_path",
    "run_replay",
    "run_scenario",
    "tracing_unavailable",
]
