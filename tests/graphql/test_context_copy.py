"""`Context.for_operation` copies what `dataclasses.replace` copies, with fresh loaders."""

from __future__ import annotations

from dataclasses import fields, replace

from code_hero.auth import ANONYMOUS
from code_hero.limits import Limits
from code_hero.resolvers.context import Context


def test_every_field_is_copied_and_the_loaders_are_not() -> None:
    """A field added later (or one made `init=False`, or a `__post_init__`) must keep
    the hand-made copy equal to `replace(ctx, _loaders=None)`."""
    ctx = Context(
        gateway=object(),  # type: ignore[arg-type]
        limits=Limits(),
        request=object(),
        response=object(),
        connection_params={"a": 1},
        observe_operation=lambda kind, status: None,
        identity=ANONYMOUS,
    )
    ctx._loaders = object()  # type: ignore[assignment]
    copy, expected = ctx.for_operation(), replace(ctx, _loaders=None)
    assert type(copy) is Context and copy._loaders is None
    for f in fields(Context):
        assert getattr(copy, f.name) is getattr(expected, f.name), f.name
    assert vars(copy).keys() == vars(expected).keys()
