"""How errors reach clients: the one mapping from exceptions to `extensions.code`.

CodeHeroError (errors.py)            -> its `.code`, its message, its `.extensions`
a lost race for a database lock      -> CONFLICT (deadlock, serialization failure) or
  (persistence.contention)          UNAVAILABLE (lock wait ran out), retryAfter
a damaged database file              -> UNAVAILABLE, retryAfter (persistence.damage)
parse, validation and limit errors,  -> BAD_USER_INPUT, their message
  no query, an operationName naming
  no operation, a wrong operation type
validation aborted for its work      -> QUERY_TOO_COMPLEX, saying what to change
  (schema.build's MERGE_BUDGET)
anything else                        -> INTERNAL, "Internal server error";
                                        the detail goes to the log only

With field suggestions turned off, "Did you mean ...?" is cut from every
message (graphql-core suggests field, argument, type and enum value names).
"""

from __future__ import annotations

import re

from graphql import GraphQLError
from graphql.validation.validate import ValidationAbortedError
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from code_hero.errors import CodeHeroError
from code_hero.persistence.contention import contention
from code_hero.persistence.damage import damage

__all__ = [
    "CODES",
    "INTERNAL",
    "INTERNAL_MESSAGE",
    "TOO_COMPLEX_TO_VALIDATE",
    "client_error",
    "error_code",
    "raw_cause",
    "root_cause",
    "without_suggestions",
]

INTERNAL = "INTERNAL"
INTERNAL_MESSAGE = "Internal server error"
# Every `extensions.code` a client can see.
CODES = frozenset(
    {
        "BAD_USER_INPUT",
        "NOT_FOUND",
        "CONFLICT",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "RATE_LIMITED",
        "QUERY_TOO_COMPLEX",
        "UNAVAILABLE",
        INTERNAL,
    }
)
# What Strawberry raises about the request itself before it parses or runs anything:
# no query, an `operationName` naming no operation of the document (or none given for
# several), an operation type the transport does not run (a query over legacy graphql-ws).
# Plain HTTP answers them 400; over SSE and WebSockets they come wrapped in a GraphQLError.
_REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def without_suggestions(message: str) -> str:
    """The message with graphql-core's "Did you mean ...?" hints cut out."""
    return _SUGGESTION.sub("", message)


def root_cause(error: GraphQLError) -> BaseException | None:
    """The exception under the GraphQL wrappers, or None for a pure GraphQL error; a
    database's lost race for a lock or damaged file as the error its client sees
    (`contention`, `damage`)."""
    cause = raw_cause(error)
    return contention(cause) or damage(cause) or cause


def raw_cause(error: GraphQLError) -> BaseException | None:
    """The exception under the GraphQL wrappers, as it was raised."""
    cause = error.original_error
    while isinstance(cause, GraphQLError) and cause.original_error is not None:
        cause = cause.original_error
    return cause


# graphql-core's text when validation stopped for its work (a rule's budget spent, or
# Python's stack), not for the number of errors it found ("Too many validation errors").
_ABORTED = "Validation aborted."
TOO_COMPLEX_TO_VALIDATE = (
    "the document is too complex to validate: it repeats a field's name (or alias) in one "
    "selection set, or spreads fragments side by side or inside one another, too many "
    "times: select each field once, and spread fewer fragments"
)


def _too_complex(error: GraphQLError) -> bool:
    return isinstance(error, ValidationAbortedError) and error.message == _ABORTED


def error_code(error: GraphQLError) -> str:
    """The `extensions.code` a client sees for this error."""
    given = (error.extensions or {}).get("code")
    if isinstance(given, str):
        return given
    if _too_complex(error):
        return "QUERY_TOO_COMPLEX"
    cause = root_cause(error)
    if isinstance(cause, CodeHeroError):
        return cause.code
    if isinstance(cause, _REQUEST_ERRORS):
        return "BAD_USER_INPUT"
    if error.path is None and (cause is None or isinstance(cause, GraphQLError)):
        # Raised before execution: the document or its variables are at fault.
        return "BAD_USER_INPUT"
    return INTERNAL


def client_error(error: GraphQLError, *, suggestions: bool = True) -> GraphQLError:
    """The error as a client may see it: with its code, masked when internal."""
    code = error_code(error)
    extensions: dict[str, object]
    if code == INTERNAL:
        message, extensions = INTERNAL_MESSAGE, {"code": code}
    else:
        cause = root_cause(error)
        extra = cause.extensions if isinstance(cause, CodeHeroError) else {}
        message = error.message if suggestions else without_suggestions(error.message)
        if cause is not raw_cause(error):  # a database's text, translated
            message = str(cause)
        if _too_complex(error):
            message = TOO_COMPLEX_TO_VALIDATE
        extensions = {**extra, **(error.extensions or {}), "code": code}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )
