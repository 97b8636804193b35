"""Secrets out before anything is printed or stored: HTTP credential headers, bearer tokens
anywhere in text, and JSON fields whose name says they hold a secret (at any depth)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"})

# Field names are normalised to snake_case first (apiKey -> api_key, Client-Secret -> client_secret);
# a name is secret when its last words are one of these, so github_token and DB_PASSWORD match
# while maxTokens, tokens and token_count do not.
_SECRET_FIELD = re.compile(
    r"(?:^|_)(?:api_?key|apikey|token|access_token|refresh_token|id_token|password|passwd|secret|client_secret"
    r"|authorization|proxy_authorization|cookie|private_key)$"
)
# MCP's own fields that end like a secret but are not one.
_NOT_SECRET = frozenset({"progress_token"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

_TEXT_PATTERNS = [
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9\-._~+/]{8,}=*"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(basic)(\s+)[A-Za-z0-9+/]{8,}=*"), r"\1\2" + REDACTED),
    # key=value / key: value spellings in free text (query strings, env dumps, log lines)
    (re.compile(r"(?i)\b((?:api[_-]?key|apikey|access[_-]?token|client[_-]?secret|password|passwd|secret|token)\s*[=:]\s*)(?![\"\[{])[^\s&,;\"']{4,}"), r"\1" + REDACTED),
    # well-known credential shapes
    (re.compile(r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
]
# Cheap pre-check: text without any of these cannot match a pattern above.
_MAYBE = re.compile(r"(?i)bearer|basic|key|token|secret|passw|sk-|pk-|rk-|gh[pousr]_|xox|AKIA")
# Raw (possibly truncated, unparseable) JSON text: "api_key": "value" pairs.
_JSON_PAIR = re.compile(r'"([A-Za-z0-9_\-]+)"(\s*:\s*)"(?:[^"\\]|\\.)*("|$)')


@lru_cache(maxsize=4096)
def is_secret_field(name: str) -> bool:
    key = _CAMEL.sub("_", name).replace("-", "_").lower()
    return key not in _NOT_SECRET and _SECRET_FIELD.search(key) is not None


def redact_text(text: str) -> str:
    """Bearer/basic credentials, key=value secrets and well-known token shapes in free text."""
    if not _MAYBE.search(text):
        return text
    for pattern, repl in _TEXT_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_json_text(text: str) -> str:
    """Redact JSON that may not parse (a truncated message): secret-named string fields, then free text."""

    def pair(m: re.Match[str]) -> str:
        if not is_secret_field(m.group(1)):
            return m.group(0)
        return f'"{m.group(1)}"{m.group(2)}"{REDACTED}"'

    return redact_text(_JSON_PAIR.sub(pair, text))


def redact(value: Any) -> Any:
    """A copy of a decoded JSON value with secret-named fields replaced and strings scrubbed."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_field(str(k)) and value_present(v) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def value_present(v: Any) -> bool:
    """Null and empty values hide nothing; keep them so the shape of the message stays visible."""
    return v not in (None, "", [], {})


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if k.lower() in SECRET_HEADERS else redact_text(v) for k, v in headers.items()}
