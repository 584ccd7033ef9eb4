"""A corpus of JSON schemas of varied shape for the structured-output tests and bench:
nested objects, arrays with min/max items, enums, patterns, anyOf, bounded numbers, consts,
nullable fields. Strings carry a maxLength so that a small model's outputs stay short."""

from __future__ import annotations

NAME = {"type": "string", "minLength": 1, "maxLength": 20}
WORD = {"type": "string", "pattern": "^[a-z]{2,10}$"}
AGE = {"type": "integer", "minimum": 0, "maximum": 120}
SCORE = {"type": "number", "minimum": 0, "maximum": 1}
COLOR = {"enum": ["red", "green", "blue"]}
FLAG = {"type": "boolean"}
ZIP = {"type": "string", "pattern": "^[0-9]{5}$"}
DATE = {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


def arr(items: dict, lo: int, hi: int) -> dict:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


def schemas() -> list[dict]:
    """The corpus, each schema valid under Draft 2020-12."""
    base = [
        obj({"name": NAME}),
        obj({"name": NAME, "age": AGE}),
        obj({"age": AGE, "score": SCORE, "ok": FLAG}),
        obj({"color": COLOR}),
        obj({"colors": arr(COLOR, 1, 3)}),
        obj({"zip": ZIP, "city": NAME}),
        obj({"when": DATE}),
        obj({"word": WORD, "count": {"type": "integer", "minimum": 1, "maximum": 9}}),
        obj({"tags": arr(WORD, 0, 4)}),
        obj({"point": obj({"x": {"type": "integer"}, "y": {"type": "integer"}})}),
        obj({"user": obj({"name": NAME, "address": obj({"zip": ZIP, "city": NAME})})}),
        obj({"items": arr(obj({"id": AGE, "label": NAME}), 1, 3)}),
        obj({"value": {"anyOf": [AGE, NAME]}}),
        obj({"value": {"anyOf": [{"type": "null"}, COLOR]}}),
        obj({"kind": {"const": "event"}, "at": DATE}),
        obj({"matrix": arr(arr({"type": "integer", "minimum": 0, "maximum": 9}, 2, 2), 2, 2)}),
        obj({"ratio": {"type": "number", "minimum": -1, "maximum": 1}}),
        obj({"n": {"type": "integer", "minimum": 100, "maximum": 999}}),
        obj({"name": NAME, "nick": NAME}, required=["name"]),
        obj({"answer": {"enum": ["yes", "no", "maybe"]}, "why": NAME}),
        arr(NAME, 2, 4),
        arr(AGE, 1, 5),
        arr(obj({"k": WORD, "v": AGE}), 1, 2),
        {"anyOf": [obj({"a": AGE}), obj({"b": NAME})]},
        {"enum": ["alpha", "beta", "gamma"]},
        obj({"flags": arr(FLAG, 3, 3)}),
        obj(
            {
                "meta": obj(
                    {"version": {"type": "integer", "minimum": 1, "maximum": 5}, "draft": FLAG}
                )
            }
        ),
        obj({"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}}),
        obj({"rgb": arr({"type": "integer", "minimum": 0, "maximum": 255}, 3, 3)}),
        obj({"title": NAME, "pages": {"type": "integer", "minimum": 1, "maximum": 2000}}),
    ]
    out = list(base)
    # Combinations: each base object schema nested under a wrapper, or in a list.
    for i, s in enumerate(base[:12]):
        out.append(obj({"id": AGE, "data": s}))
        out.append(obj({"list": arr(s, 1, 2)}) if i % 2 else obj({"first": s, "second": COLOR}))
    return out
