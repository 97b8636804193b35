"""Tool descriptions as an attack surface: per-server snapshots of tools/list, drift between
snapshots (a description that changes after the user approved the tool), and a scan for
prompt-injection patterns with the evidence that triggered each flag."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from whyprobe.mcpwire.redact import redact_text


@dataclass(frozen=True)
class Flag:
    category: str  # instruction | hidden | secrets
    rule: str
    evidence: str  # the matched text with a little context, invisible characters spelled out
    offset: int
    severity: str = "high"  # high | medium

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "rule": self.rule, "evidence": self.evidence, "offset": self.offset, "severity": self.severity}


_I = re.IGNORECASE | re.DOTALL
_RULES: list[tuple[str, str, str, re.Pattern[str]]] = [
    ("instruction", "ignore-previous", "high", re.compile(r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier|other|system)\s+(?:instructions?|prompts?|rules|messages|directions)", _I)),
    ("instruction", "conceal-from-user", "high", re.compile(r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention|reveal|show|notify|alert)\b[^.\n]{0,40}?\buser\b|\bwithout\s+(?:telling|informing|notifying|alerting)\s+the\s+user\b", _I)),
    ("instruction", "imperative-to-model", "medium", re.compile(r"\byou\s+(?:must|have\s+to|are\s+required\s+to|should\s+always)\b", _I)),
    ("instruction", "important-tag", "medium", re.compile(r"<\s*/?\s*(?:important|system|instructions?|secret|hidden)\s*>", _I)),
    ("instruction", "system-prompt", "high", re.compile(r"(?:^|\n)\s*(?:system|assistant)\s*:|\byou\s+are\s+(?:now\s+)?(?:an?\s+|the\s+)?(?:ai|assistant|language\s+model|llm|chatbot)\b|\[\s*(?:system|inst)\s*\]|<\|im_start\|>", _I)),
    ("instruction", "tool-hijack", "high", re.compile(r"\b(?:before|instead\s+of|after)\s+(?:using|calling|invoking)\s+(?:this|any|other|the)\b[^.\n]{0,30}\btools?\b", _I)),
    ("hidden", "html-comment", "high", re.compile(r"<!--.*?(?:-->|$)", _I)),
    ("hidden", "whitespace-run", "medium", re.compile(r"[ \t]{40,}|\n{6,}|(?:[ \t]*\n){6,}")),
    ("hidden", "base64-blob", "medium", re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[0-9+/])(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])[A-Za-z0-9+/]{40,}={0,2}")),
    ("secrets", "ssh-keys", "high", re.compile(r"~?/?\.ssh\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|authorized_keys", _I)),
    ("secrets", "secret-files", "high", re.compile(r"(?<![\w.])\.env\b|\bcredentials?(?:\.json)?\b|\.aws/|\.netrc\b|/etc/(?:passwd|shadow)\b|\.kube/config|\bprivate[\s_-]key\b|mcp\.json\b", _I)),
    ("secrets", "api-keys", "medium", re.compile(r"\bapi[\s_-]?keys?\b|\baccess[\s_-]tokens?\b|\bpasswords?\b|\bsecrets?\b", _I)),
    ("secrets", "exfiltrate", "high", re.compile(r"\bread\s+(?:the\s+)?(?:contents?\s+of\s+)?(?:the\s+)?file\b|\bpass\s+(?:its|the|their)\s+contents?\s+(?:as|in|to)\b|\b(?:include|send|append|attach)\s+(?:the\s+)?(?:full\s+)?contents?\s+of\b", _I)),
]
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]+")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]+")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")


def _evidence(text: str, start: int, end: int, context: int = 24) -> str:
    a, b = max(start - context, 0), min(end + context, len(text))
    snippet = text[a:b]
    if len(snippet) > 200:
        snippet = snippet[:200] + "…"
    out = "".join(
        c if c in "\n\t" or not unicodedata.category(c).startswith(("C", "Z")) or c == " " else f"<U+{ord(c):04X}>"
        for c in snippet
    )
    return redact_text(out.replace("\n", "\\n"))


def scan_description(text: str) -> list[Flag]:
    """Prompt-injection patterns in a tool description (or any text a model will read)."""
    flags: list[Flag] = []
    for category, rule, severity, pattern in _RULES:
        for m in pattern.finditer(text):
            flags.append(Flag(category, rule, _evidence(text, m.start(), m.end()), m.start(), severity))
    for rule, pattern in (("zero-width", _INVISIBLE), ("bidi-control", _BIDI), ("unicode-tags", _TAGS)):
        for m in pattern.finditer(text):
            flags.append(Flag("hidden", rule, _evidence(text, m.start(), m.end()), m.start()))
    return sorted(flags, key=lambda f: f.offset)


def _schema_texts(schema: Any) -> Iterable[str]:
    """Descriptions and titles inside an input schema: injections hide in parameter docs too."""
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in ("description", "title") and isinstance(v, str):
                yield v
            else:
                yield from _schema_texts(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _schema_texts(v)


@dataclass
class ToolSnapshot:
    ts_ns: int
    server: str
    tool_name: str
    description: str
    input_schema: str  # canonical JSON (sorted keys)
    digest: str
    flags: list[Flag] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """Columns of mcp_tool_snapshots (description stored redacted, scanned raw)."""
        return {
            "timestamp": self.ts_ns,
            "server": self.server,
            "tool_name": self.tool_name,
            "description": redact_text(self.description),
            "input_schema": self.input_schema,
            "digest": self.digest,
            "flags": orjson.dumps([f.to_dict() for f in self.flags]).decode(),
        }

    @classmethod
    def from_row(cls, row: Any) -> ToolSnapshot:
        """From an mcp_tool_snapshots row (sqlite3.Row or dict): to compare with an earlier trace."""
        return cls(row["timestamp"], row["server"], row["tool_name"], row["description"], row["input_schema"], row["digest"])


def snapshot(server: str, tools: list[dict[str, Any]], ts_ns: int) -> list[ToolSnapshot]:
    out = []
    for tool in tools:
        name = str(tool.get("name", ""))
        desc = tool.get("description") or ""
        desc = desc if isinstance(desc, str) else str(desc)
        schema_obj = tool.get("inputSchema") or {}
        schema = orjson.dumps(schema_obj, option=orjson.OPT_SORT_KEYS).decode()
        digest = hashlib.sha256(f"{name}\0{desc}\0{schema}".encode()).hexdigest()
        flags = scan_description(desc)
        for text in _schema_texts(schema_obj):
            flags += [Flag(f.category, f.rule, f.evidence, f.offset, f.severity) for f in scan_description(text)]
        out.append(ToolSnapshot(ts_ns, server, name, desc, schema, digest, flags))
    return out


@dataclass(frozen=True)
class Drift:
    server: str
    tool_name: str
    change: str  # added | removed | description | schema
    before: str | None
    after: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "tool_name": self.tool_name, "change": self.change, "before": self.before, "after": self.after}


def drift(previous: Iterable[ToolSnapshot], current: Iterable[ToolSnapshot]) -> list[Drift]:
    """What changed per server between two tools/list snapshots; servers only in one side are
    not compared (a server not listed yet is no evidence of removal)."""
    before = {(s.server, s.tool_name): s for s in previous}
    after = {(s.server, s.tool_name): s for s in current}
    servers = {k[0] for k in before} & {k[0] for k in after}
    out: list[Drift] = []
    for key in sorted(set(before) | set(after)):
        if key[0] not in servers:
            continue
        b, a = before.get(key), after.get(key)
        if b is None:
            out.append(Drift(key[0], key[1], "added", None, a.description))
        elif a is None:
            out.append(Drift(key[0], key[1], "removed", b.description, None))
        elif b.digest != a.digest:
            if b.description != a.description:
                out.append(Drift(key[0], key[1], "description", b.description, a.description))
            if b.input_schema != a.input_schema:
                out.append(Drift(key[0], key[1], "schema", b.input_schema, a.input_schema))
    return out
