"""Resolvers: parse arguments, call the gateway (or the operation's loaders), map to types.

Every function takes strawberry's `info` first; `info.context` is a
`Context`. Nothing here holds state or reads configuration.
"""

__all__: list[str] = []
