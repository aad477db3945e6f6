"""Host allow-list, Origin policy and hardening headers (issue 11 fills this in).

`install(app, settings)` is called once by app.create_app, after the access middleware is added (so it runs
before it: Starlette runs the middleware added last first)."""
from typing import Any


def install(app: Any, settings: Any) -> None:
    """Add the security middleware to `app`; `settings()` returns the current HttpSettings."""
