"""Turns pydantic's validation errors into one InputError naming file, field and value."""

from __future__ import annotations

from typing import NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from planner.errors import InputError

Document = TypeVar("Document", bound=BaseModel)


def validate_document(model: type[Document], data: object, source: str,
                      expected: str = "a mapping") -> Document:
    """A parsed file (YAML/JSON) validated as `model`, or one InputError naming file and field."""
    if not isinstance(data, dict):
        raise InputError(f"expected {expected} at the top level", file=source,
                         value=type(data).__name__)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, source)


def raise_validation_error(exc: ValidationError, source: str) -> NoReturn:
    """Raise the first error of `exc` as an InputError (the user fixes one thing at a time)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    message = first.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    value = first.get("input")
    if first.get("type") == "missing":
        value = None
        message = "required field is missing"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
        value = None
    elif isinstance(value, (dict, list)):
        value = None  # whole sections are too long to echo; the field path says where
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    raise InputError(message, file=source, field=field, value=value) from None


def field_error(field: str, message: str, value: object = None) -> ValidationError:
    """A ValidationError located at a dotted `field` path (e.g. "devices.2.link_bytes_per_s"),
    for a model validator whose complaint belongs to one field rather than to the whole model."""
    loc = tuple(int(part) if part.isdigit() else part for part in field.split("."))
    detail = InitErrorDetails(type=PydanticCustomError("field_error", message), loc=loc,
                              input=value)
    return ValidationError.from_exception_data("field_error", [detail])
