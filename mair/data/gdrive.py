"""Google Drive through gdown: the one Drive path of dataset and weights downloads.

Drive serves large files behind a virus-scan confirmation page, rate-limits popular files ("too many users")
and changes its pages from time to time; gdown is the maintained library that follows all of this. Here it is
wrapped so that:

* :func:`download_drive_file` writes the file to the caller's staging path only when the transfer is complete
  (gdown keeps a partial ``<name><random>.part`` beside it and resumes from it; it publishes the output only
  after the last byte), so the caller verifies the checksum before anything reaches the final path; it says
  whether the length was known and matched (a first-seen checksum is pinned only then);
* :func:`list_drive_folder` maps the file names of a shared folder to their Drive file ids (nothing is
  downloaded);
* every gdown or network failure becomes one :class:`~mair.data.download.DownloadError` line that says what
  to do by hand (``hint``).

``gdown_download`` and ``gdown_download_folder`` are the only calls into gdown (the boundary a test may
replace, since Google cannot be reached from CI).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

FOLDER_URL = "https://drive.google.com/drive/folders/{id}"
FILE_URL = "https://drive.google.com/file/d/{id}/view"


def _gdown() -> Any:
    try:
        import gdown
    except ImportError as error:  # a dependency of mair; only a broken install lacks it
        from mair.common.errors import DownloadError

        raise DownloadError(f"Google Drive downloads need the gdown package ({error}): pip install gdown") from None
    return gdown


def _supported(function: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the optional ones (``timeout``, ``retries``, ``progress``) this gdown does not take."""
    import inspect

    params = inspect.signature(function).parameters
    return {k: v for k, v in kwargs.items() if k in params or k not in ("timeout", "retries", "progress")}


def gdown_download(**kwargs: Any) -> Any:
    """``gdown.download(**kwargs)``."""
    function = _gdown().download
    return function(**_supported(function, kwargs))


def gdown_download_folder(**kwargs: Any) -> Any:
    """``gdown.download_folder(**kwargs)``."""
    function = _gdown().download_folder
    return function(**_supported(function, kwargs))


def _first_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text or type(error).__name__)[:300]


def _reason(error: BaseException) -> str:
    """What Drive (through gdown) said, in a few words."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectionError", "Timeout", "ProxyError", "SSLError"}:
        return f"cannot reach Google Drive ({type(error).__name__}: no network, a proxy or a firewall)"
    text = str(error).lower()
    if "too many users" in text or "quota" in text or ("rate" in text and "limit" in text):
        return "the file's download quota is exhausted (too many users); try again in 24 h or fetch it by hand"
    if "permission" in text or "cannot retrieve the public link" in text or "access" in text:
        return f"Drive refused the download ({_first_line(error)})"
    return _first_line(error)


def download_drive_file(
    file_id: str,
    output: Path,
    label: str,
    hint: str,
    *,
    timeout: float | None = 60.0,
    retries: int = 3,
    quiet: bool = True,
) -> bool:
    """Download Drive file ``file_id`` to ``output`` (created only once complete; resumes a partial one).

    Returns whether the transfer is known complete: gdown reported the file's length and that many bytes arrived
    (False when Drive sent no length, or gdown found ``output`` already there and fetched nothing, so that the
    caller never pins a first-seen checksum of a possibly cut transfer; see :mod:`mair.data.lockfile`). Raises
    :class:`~mair.data.download.DownloadError` with one line ending in ``hint`` on any failure.
    """
    from mair.common.errors import DownloadError

    output.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int | None] = {"done": None, "total": None}

    def progress(done: int, total: int | None) -> None:
        seen["done"], seen["total"] = done, total

    try:
        got = gdown_download(
            id=file_id,
            output=str(output),
            quiet=quiet,
            resume=True,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
    except DownloadError:
        raise
    except Exception as error:  # gdown raises its own errors, requests' and OSError
        raise DownloadError(
            f"{label}: Google Drive file {file_id}: {_reason(error)}; {hint} ({FILE_URL.format(id=file_id)})"
        ) from None
    if got is None or not output.is_file():
        raise DownloadError(f"{label}: Google Drive file {file_id}: gdown returned no file; {hint}")
    return seen["total"] is not None and seen["done"] == seen["total"]


def list_drive_folder(folder_id: str, label: str, hint: str, *, timeout: float | None = 60.0) -> dict[str, str]:
    """``{file name: Drive file id}`` of every file in the shared folder ``folder_id`` (and its subfolders).

    A name found twice (in two subfolders) maps to the first one. Nothing is downloaded.
    """
    from mair.common.errors import DownloadError

    with tempfile.TemporaryDirectory(prefix="mair-drive-") as scratch:
        try:
            files = gdown_download_folder(id=folder_id, output=scratch, quiet=True, skip_download=True, timeout=timeout)
        except Exception as error:
            raise DownloadError(
                f"{label}: cannot list Google Drive folder {folder_id}: {_reason(error)}; {hint}"
            ) from None
    out: dict[str, str] = {}
    for item in files or []:
        name = Path(str(getattr(item, "path", "") or "")).name
        file_id = getattr(item, "id", None)
        if name and file_id and name not in out:
            out[name] = str(file_id)
    return out


__all__ = ["FILE_URL", "FOLDER_URL", "download_drive_file", "list_drive_folder"]
