"""json_schema tasks: a request describing an object in words, and a JSON schema (a subset of one entity's
fields, some required, with types, enums, bounds and arrays). Held out by object: the eval split's
requested values never occur together in training (is_held_out on the entity and its values)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skillweave.skill import is_held_out

FIRST_NAMES = ("Ada", "Grace", "Alan", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Frances", "Edsger", "Radia")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson", "Dijkstra")
PRODUCTS = ("Blue Kettle", "Desk Lamp", "Garden Hose", "Chess Set", "Yoga Mat", "Paper Shredder", "Trail Shoes")


@dataclass(frozen=True)
class Field:
    name: str
    schema: dict
    value: Callable[[random.Random], Any]
    phrase: Callable[[Any], str]
    """The words that ask for a value ("costs 24.50")."""


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _listed(values: list[str]) -> str:
    quoted = [f'"{v}"' for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def text(name: str, value: Callable[[random.Random], str], template: str) -> Field:
    return Field(name, {"type": "string"}, value, template.format)


def pick(name: str, pool: tuple[str, ...], template: str) -> Field:
    return text(name, lambda rng: rng.choice(pool), template)


def enum(name: str, options: tuple[str, ...], template: str) -> Field:
    return Field(name, {"type": "string", "enum": list(options)}, lambda rng: rng.choice(options), template.format)


def integer(name: str, low: int, high: int, template: str, **bounds: int) -> Field:
    return Field(name, {"type": "integer", **bounds}, lambda rng: rng.randint(low, high), template.format)


def number(name: str, low: int, high: int, scale: int, template: str, **bounds: int) -> Field:
    """A number drawn in steps of 1/scale (cents, tenths), so what the request shows is the exact value."""
    return Field(name, {"type": "number", **bounds}, lambda rng: rng.randint(low, high) / scale, template.format)


def flag(name: str, yes: str, no: str) -> Field:
    return Field(name, {"type": "boolean"}, lambda rng: rng.random() < 0.5, lambda v: yes if v else no)


def strings(name: str, value: Callable[[random.Random], list[str]], singular: str, plural: str) -> Field:
    def phrase(values: list[str]) -> str:
        return (singular if len(values) == 1 else plural).format(_listed(values))

    return Field(name, {"type": "array", "items": {"type": "string"}}, value, phrase)


def _some(pool: tuple[str, ...]) -> Callable[[random.Random], list[str]]:
    return lambda rng: rng.sample(pool, rng.randint(1, 3))


ENTITIES: dict[str, tuple[Field, ...]] = {  # "a <entity>" -> its fields, in schema order
    "a user account": (
        text("name", _name, 'is named "{}"'),
        integer("age", 18, 90, "is {} years old", minimum=0),
        text("email", lambda rng: f"{rng.choice(FIRST_NAMES).lower()}{rng.randint(1, 99)}@example.org",
             "has the email address {}"),
        enum("role", ("admin", "editor", "viewer"), 'has the role "{}"'),
        flag("active", "is active", "is not active"),
    ),
    "a product": (
        pick("name", PRODUCTS, 'is called "{}"'),
        number("price", 100, 50_000, 100, "costs {:.2f}", minimum=0),
        flag("in_stock", "is in stock", "is out of stock"),
        enum("category", ("kitchen", "garden", "office", "toys", "sports"), 'is in the category "{}"'),
        strings("tags", _some(("steel", "compact", "gift", "eco", "sale")), "has the tag {}", "has the tags {}"),
        text("sku", lambda rng: f"{rng.choice(('KT', 'DL', 'GH', 'YM'))}-{rng.randint(1000, 9999)}", "has the SKU {}"),
    ),
    "an event": (
        pick("title", ("Rust Meetup", "Data Day", "Open Lab", "Design Review", "Spring Summit"), 'is titled "{}"'),
        text("date", lambda rng: f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "takes place on {}"),
        integer("attendees", 5, 400, "expects {} attendees", minimum=0),
        flag("online", "is online", "is held in person"),
        enum("format", ("talk", "workshop", "panel", "meetup"), 'has the format "{}"'),
        strings("speakers", lambda rng: [_name(rng) for _ in range(rng.randint(1, 3))], "has the speaker {}",
                "has the speakers {}"),
    ),
    "a book": (
        pick("title", ("Rust in Practice", "Quiet Harbours", "The Long Winter", "Data at Scale", "Paper Moons"),
             'is titled "{}"'),
        text("author", _name, 'was written by "{}"'),
        integer("year", 1900, 2025, "was published in {}"),
        integer("pages", 40, 900, "has {} pages", minimum=1),
        enum("genre", ("fiction", "history", "science", "poetry"), 'is in the genre "{}"'),
        flag("available", "is available", "is not available"),
    ),
    "an order": (
        text("order_id", lambda rng: f"A-{rng.randint(10_000, 99_999)}", "has the ID {}"),
        integer("quantity", 1, 50, "is for {} items", minimum=1),
        number("total", 100, 200_000, 100, "totals {:.2f}", minimum=0),
        enum("status", ("pending", "shipped", "delivered", "cancelled"), 'has the status "{}"'),
        flag("express", "ships express", "ships by standard delivery"),
        strings("items", _some(PRODUCTS), "contains {}", "contains {}"),
    ),
    "a sensor reading": (
        pick("sensor", ("north-roof", "boiler-2", "lab-fridge", "cellar", "greenhouse"), 'comes from the sensor "{}"'),
        number("celsius", -300, 450, 10, "reads {} degrees Celsius"),
        integer("humidity", 0, 100, "shows {} percent humidity", minimum=0, maximum=100),
        flag("ok", "is within limits", "is out of limits"),
        strings("alerts", _some(("high-temp", "low-battery", "door-open", "humidity", "offline")),
                "raised the alert {}", "raised the alerts {}"),
    ),
}


def draw(rng: random.Random, split: str) -> tuple[str, dict]:
    """One task; meta = {"key": the entity and its values, "schema": the JSON schema, "values": the object asked}."""
    while True:
        entity = rng.choice(tuple(ENTITIES))
        fields = [f for f in ENTITIES[entity] if rng.random() < 0.75] or list(ENTITIES[entity][:2])
        required = {f.name for f in fields if rng.random() < 0.5} or {fields[0].name}
        asked = [f for f in fields if f.name in required or rng.random() < 0.5]
        values = {f.name: f.value(rng) for f in asked}
        key = json.dumps([entity, values], sort_keys=True)
        if is_held_out(key) == (split == "eval"):
            break
    schema = {
        "type": "object",
        "properties": {f.name: f.schema for f in fields},
        "required": [f.name for f in fields if f.name in required],
        "additionalProperties": False,
    }
    phrases = [f.phrase(values[f.name]) for f in asked]
    described = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
    prompt = f"Create a JSON object for {entity} that {described}.\n\nIt must validate against this JSON schema:\n"
    return prompt + json.dumps(schema), {"key": key, "schema": schema, "values": values}


def reference(task: dict) -> str:
    return json.dumps(task["meta"]["values"])
