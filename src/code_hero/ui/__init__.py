"""The dashboard at /ui and the offline GraphiQL page: static files shipped in the package.

`static/` holds the page (plain ES modules, one per view, and one CSS file);
`vendor/` holds third-party browser files, each under `<package>@<version>/`
with its licence (see `vendor/README.md`). Nothing here is built at install
time, and no page served from here loads anything from another origin.
"""

from code_hero.ui.routes import STATIC, VENDOR, offline_graphiql_html, ui_routes, vendor_routes

__all__ = ["STATIC", "VENDOR", "offline_graphiql_html", "ui_routes", "vendor_routes"]
