"""afs-dashboard: ``afs dashboard``, a local web page over the store's history.

Importing this package stays cheap (training code loads every ``afs`` entry point):
Starlette, uvicorn and Jinja2 load only when the command runs.
"""

from __future__ import annotations

__all__: list[str] = []
