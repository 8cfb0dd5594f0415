"""How errors reach clients: the one mapping from exceptions to `extensions.code`.

CodeHeroError (errors.py)            -> its `.code`, its message
parse, validation and limit errors   -> BAD_USER_INPUT, their message
anything else                        -> INTERNAL, "Internal server error";
                                        the detail goes to the log only
"""

from __future__ import annotations

from graphql import GraphQLError

from code_hero.errors import CodeHeroError

__all__ = ["INTERNAL", "INTERNAL_MESSAGE", "client_error", "error_code", "root_cause"]

INTERNAL = "INTERNAL"
INTERNAL_MESSAGE = "Internal server error"


def root_cause(error: GraphQLError) -> BaseException | None:
    """The exception under the GraphQL wrappers, or None for a pure GraphQL error."""
    cause = error.original_error
    while isinstance(cause, GraphQLError) and cause.original_error is not None:
        cause = cause.original_error
    return cause


def error_code(error: GraphQLError) -> str:
    """The `extensions.code` a client sees for this error."""
    given = (error.extensions or {}).get("code")
    if isinstance(given, str):
        return given
    cause = root_cause(error)
    if isinstance(cause, CodeHeroError):
        return cause.code
    if error.path is None and (cause is None or isinstance(cause, GraphQLError)):
        # Raised before execution: the document or its variables are at fault.
        return "BAD_USER_INPUT"
    return INTERNAL


def client_error(error: GraphQLError) -> GraphQLError:
    """The error as a client may see it: with its code, masked when internal."""
    code = error_code(error)
    if code == INTERNAL:
        message, extensions = INTERNAL_MESSAGE, {"code": code}
    else:
        message, extensions = error.message, {**(error.extensions or {}), "code": code}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )
