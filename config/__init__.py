"""Settings: documented defaults (config/defaults.py) < .env file < environment < test overrides."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from dotenv import dotenv_values

from config import defaults

# Environment names that differ from the setting they set.
ALIASES = {"ILGUN_ALLOW_PRIVATE_URLS": "DOWNLOAD_ALLOW_PRIVATE_URLS"}


def _defaults() -> dict[str, Any]:
    return {k: getattr(defaults, k) for k in dir(defaults) if k.isupper()}


def _coerce(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if isinstance(default, (dict, list)):
        try:
            return json.loads(raw)
        except ValueError:
            raise ValueError(f"{name} must be JSON") from None
    return raw


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                env_file: str | os.PathLike | None = ".env") -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    settings = _defaults()
    sources: dict[str, str] = {}
    if (overrides or {}).get("TESTING"):
        env_file, environ = None, {}  # tests see only their own config
    if env_file and Path(env_file).is_file():
        sources.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    sources.update(environ)
    for env_name, raw in sources.items():
        name = ALIASES.get(env_name, env_name)
        if name in settings:
            settings[name] = _coerce(env_name, raw, settings[name])
    settings.update(overrides or {})
    data = Path(settings["ILGUN_DATA"]).resolve()
    settings["ILGUN_DATA"] = str(data)
    if not settings["DATABASE_URL"]:
        settings["DATABASE_URL"] = f"sqlite:///{data / 'ilgun.db'}"
    if not settings["FILES_ROOT"]:
        settings["FILES_ROOT"] = str(data / "files")
    if not settings["RATELIMIT_STORAGE_URI"]:
        # The embedded default: counters in the app's own database, shared by all workers.
        settings["RATELIMIT_STORAGE_URI"] = "ilgun+" + settings["DATABASE_URL"]
    return settings
