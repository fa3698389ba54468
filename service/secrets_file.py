"""Instance secrets generated on first start, shared by every worker of the instance."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from filelock import FileLock


def ensure_secrets(data_dir: str | os.PathLike) -> dict[str, str]:
    """Read $ILGUN_DATA/secrets.json, creating it (mode 0600) if missing. Three gunicorn
    workers start at the same moment, so creation happens under a file lock: all of them
    must end up signing tokens with the same key."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    path = data / "secrets.json"
    with FileLock(str(path) + ".lock", timeout=30):
        if path.exists():
            return json.loads(path.read_text())
        values = {"SECRET_KEY": secrets.token_urlsafe(48), "JWT_SECRET_KEY": secrets.token_urlsafe(48)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return values
