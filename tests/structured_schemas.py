"""JSON schemas of the kind data-extraction scripts and OpenAI strict-mode requests use, for
tests/test_constrain.py. Free-text strings carry a maxLength (as extraction schemas often do) so
that a random-weight model, which never chooses to close a string, still finishes."""
from __future__ import annotations


def obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required, "additionalProperties": False}


def text(n: int = 12) -> dict:
    return {"type": "string", "maxLength": n}


SCHEMAS = {
    "person": obj({"name": text(), "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    "person_optional_email": obj({"name": text(), "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}},
                                 required=["name"]),
    "address": obj({"street": text(), "city": text(), "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "country": {"enum": ["FR", "DE", "US", "JP"]}}),
    "customer_nested": obj({"id": {"type": "integer", "minimum": 1, "maximum": 99999},
                            "billing": obj({"city": text(), "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
                            "vip": {"type": "boolean"}}),
    "invoice_items": obj({"invoice": {"type": "string", "pattern": "^INV-[0-9]{4}$"},
                          "items": {"type": "array", "minItems": 1, "maxItems": 3,
                                    "items": obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                                                  "qty": {"type": "integer", "minimum": 1, "maximum": 99}})}}),
    "sentiment": obj({"label": {"enum": ["positive", "negative", "neutral"]},
                      "score": {"type": "integer", "minimum": -5, "maximum": 5}}),
    "tags_bounded": obj({"tags": {"type": "array", "items": text(8), "minItems": 2, "maxItems": 4}}),
    "event_date": obj({"title": text(), "date": {"type": "string", "format": "date"},
                       "attendees": {"type": "array", "items": text(8), "maxItems": 2}}),
    "contact_anyof": obj({"contact": {"anyOf": [
        obj({"phone": {"type": "string", "pattern": "^\\+[0-9]{6,10}$"}}),
        obj({"email": {"type": "string", "pattern": "^[a-z]{1,6}@example\\.org$"}})]}}),
    "nullable_middle_name": obj({"first": text(), "middle": {"type": ["string", "null"], "maxLength": 8},
                                 "last": text()}),
    "const_version": obj({"version": {"const": 2}, "kind": {"const": "report"}, "ok": {"type": "boolean"}}),
    "matrix_rows": obj({"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                                 "items": obj({"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                               "y": {"type": "integer", "minimum": 0, "maximum": 9}})}}),
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                        "minItems": 3, "maxItems": 5},
    "top_level_enum": {"enum": ["red", "green", "blue"]},
    "defs_and_refs": {"$defs": {"point": obj({"lat": {"type": "integer", "minimum": -90, "maximum": 90},
                                              "lon": {"type": "integer", "minimum": -180, "maximum": 180}})},
                      **obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}})},
    "all_of": {"allOf": [obj({"a": {"type": "integer", "minimum": 0, "maximum": 5}, "b": {"type": "boolean"}},
                             required=["a"]),
                         {"required": ["b"]}]},
    "exclusive_bounds": obj({"percent": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
                             "rank": {"type": "integer", "minimum": 1, "maximum": 3}}),
    "string_lengths": obj({"code": {"type": "string", "minLength": 3, "maxLength": 5},
                           "note": {"type": "string", "maxLength": 6}}),
    "recipe": obj({"name": text(), "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                   "ingredients": {"type": "array", "minItems": 1, "maxItems": 3,
                                   "items": obj({"item": text(8), "grams": {"type": "integer", "minimum": 1, "maximum": 999}})},
                   "vegetarian": {"type": "boolean"}}),
    "review": obj({"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                   "pros": {"type": "array", "items": text(10), "maxItems": 2},
                   "verified": {"type": "boolean"}}, required=["rating", "verified"]),
    "function_call_json": obj({"function": {"enum": ["get_weather", "search", "send_email"]},
                               "arguments": obj({"query": text()}, required=[])}),
    "all_optional": obj({"title": text(), "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                         "done": {"type": "boolean"}}, required=[]),
    "number_bounded": obj({"temperature": {"type": "number", "minimum": -50, "maximum": 60,
                                           "multipleOf": 0.5}, "city": text()}),
}
