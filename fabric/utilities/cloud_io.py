"""Lightning's ``cloud_io`` entry point: the fsspec filesystem behind a local or remote path.

fsspec is imported only when this function runs, so ``import fabric`` stays free of it.
"""

from __future__ import annotations

import os
from typing import Any


def get_filesystem(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Return the ``fsspec`` filesystem that serves ``path`` (``LocalFileSystem`` for a plain path).

    ``kwargs`` go to the filesystem's constructor (credentials, endpoints), as with ``fsspec.core.url_to_fs``.
    """
    try:
        from fsspec.core import url_to_fs
    except ImportError as error:  # pragma: no cover - torch depends on fsspec
        raise ImportError(
            f"get_filesystem({str(path)!r}) needs fsspec: `pip install torch-fabric[remote]` (plus the package "
            f"of your store, e.g. s3fs or gcsfs)."
        ) from error
    filesystem, _ = url_to_fs(os.fspath(path), **kwargs)
    return filesystem


def is_remote(path: Any) -> bool:
    """Whether ``path`` names remote storage (``protocol://...``, other than ``file://``)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    return isinstance(text, str) and "://" in text and not text.startswith("file://")
