"""json_schema checks: the response is the JSON object alone (json_only), the object validates against the
schema (json_schema_valid) and it carries exactly the requested values (json_values). The last two read
the object even when the response wraps it in text or a code fence, so each check measures one thing.

`jsonschema` is not installed, so `validate` implements the subset of JSON Schema the generator writes:
type, properties, required, additionalProperties: false, enum, minimum, maximum and array items."""

from __future__ import annotations

import json
import re
from typing import Any

from skillweave.rules import RuleResult, Sample, rule

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n?```", re.DOTALL)
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: dict, path: str = "$") -> list[str]:
    """The ways `value` breaks `schema` (empty when it validates), each naming where."""
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{path} must be of type {kind}, got {json.dumps(value)[:40]}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path} must be one of {schema['enum']}, got {json.dumps(value)}")
    if _TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path} must be at least {schema['minimum']}, got {value}")
    if _TYPES["number"](value) and "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path} must be at most {schema['maximum']}, got {value}")
    if isinstance(value, dict):
        errors += [f"{path} lacks the required field {key!r}" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                errors += validate(item, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path} has the field {key!r}, which the schema does not allow")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def find_json(text: str) -> Any:
    """The JSON value of the response: the whole text, else a fenced block, else the outermost {...}; None if
    none parses."""
    fence = _FENCE.search(text)
    start, end = text.find("{"), text.rfind("}")
    for candidate in (
        text.strip(),
        fence.group(1) if fence else None,
        text[start : end + 1] if 0 <= start < end else None,
    ):
        if candidate:
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                continue
    return None


@rule("json_only")
def json_only(sample: Sample) -> RuleResult:
    """The whole response parses as one JSON object: no text around it, no code fence."""
    text = sample["response"].strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        where = (
            "a code fence"
            if text.startswith("```")
            else "text around the JSON"
            if find_json(text) is not None
            else "invalid JSON"
        )
        return RuleResult(False, 0.0, f"not JSON alone: {where} ({e.msg})")
    if not isinstance(value, dict):
        return RuleResult(False, 0.0, f"JSON, but not an object: {text[:40]!r}")
    return RuleResult(True, 1.0, "one JSON object")


@rule("json_schema_valid")
def json_schema_valid(sample: Sample) -> RuleResult:
    """The response's JSON validates against meta["schema"]."""
    value = find_json(sample["response"])
    if value is None:
        return RuleResult(False, 0.0, "no JSON in the response")
    errors = validate(value, sample["meta"]["schema"])
    if errors:
        return RuleResult(False, 0.0, f"{len(errors)} schema error(s), e.g. {errors[0]}")
    return RuleResult(True, 1.0, "validates against the schema")


def _same(got: Any, want: Any) -> bool:
    """JSON equality: numbers by value (24.5 == 24.50, 3 == 3.0), booleans never equal to numbers, lists in order."""
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and got == want
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    return got == want


@rule("json_values")
def json_values(sample: Sample) -> RuleResult:
    """The response's JSON object has exactly the fields of meta["values"], each with the requested value:
    none missing, none invented."""
    value, want = find_json(sample["response"]), sample["meta"]["values"]
    if not isinstance(value, dict):
        return RuleResult(False, 0.0, "no JSON object in the response")
    missing = [key for key in want if key not in value]
    invented = [key for key in value if key not in want]
    wrong = [key for key in want if key in value and not _same(value[key], want[key])]
    if missing or invented or wrong:
        parts = [
            f"{what} {', '.join(keys)}"
            for what, keys in (("missing", missing), ("not requested", invented), ("wrong value for", wrong))
            if keys
        ]
        return RuleResult(False, 0.0, "; ".join(parts))
    return RuleResult(True, 1.0, f"the {len(want)} requested values")
