"""The one way a file's SHA-256 is computed (model files, engine artifacts, exports)."""

import hashlib
from pathlib import Path
from typing import Union


def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes, read in ``chunk``-sized blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
