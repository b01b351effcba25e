"""Turns pydantic validation errors into short, human-readable lines that name the source and the key path."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got value)`."""
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        got = ""
        if item["type"] not in ("missing", "extra_forbidden") and "input" in item:
            shown = repr(item["input"])
            got = f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
        if item["type"] == "extra_forbidden":
            message = "unknown key (not part of the schema)"
        lines.append(f"{source}: {path}: {message}{got}")
    return "\n".join(lines)
