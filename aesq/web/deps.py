"""The web application's one entry to the settings: a FastAPI dependency, also used by the token middleware."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from aesq.core.config import Settings, get_settings


def web_settings() -> Settings:
    """The settings of this web process, read once (tests change them with `get_settings.cache_clear()`)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(web_settings)]
