"""Fetch released files: a local folder first, else a resumable https download; sha256 pinned at first use.

`fetch(url, dest)` returns a file holding the bytes of `url`:
1. `local_dir/<name>` if that folder has the file (used in place, never copied or deleted);
2. `dest` if it was downloaded before;
3. else a download into `dest.part` (resumed with an HTTP Range request after an interrupted transfer),
   renamed onto `dest` only when complete and checked, so a final name never holds a partial file.
The sha256 of the first copy is recorded in the sidecar `dest.sha256` (`sha256sum` format) and every later
use is checked against it (and against `sha256` when the caller knows the published hash).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from edm2lib.files import atomic_write_text, fsync_dir, sha256_file

CHUNK = 1 << 20
_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FetchError(FileNotFoundError):
    """The file is not available here (offline, failed or truncated transfer); the message says where
    to put it."""


def _hint(url: str, dest: Path, local_dir: Path | None) -> str:
    where = f" (or into official.local_dir {local_dir})" if local_dir else " (or set official.local_dir)"
    return f"download {url} and place it at {dest}{where}"


def sidecar(dest: Path) -> Path:
    """The file that records the sha256 of `dest`'s first copy."""
    return dest.with_name(dest.name + ".sha256")


def recorded_sha256(dest: Path) -> str | None:
    side = sidecar(dest)
    if not side.is_file():
        return None
    text = side.read_text().split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise ValueError(f"{side}: not a sha256 record ('<hex>  <name>'); delete it to record a new one")
    return text[0]


def _check(path: Path, dest: Path, expected: str | None, remove: bool) -> str:
    """sha256 of `path`, checked against `expected` and the sidecar; recorded there if it is the first."""
    actual = sha256_file(path)
    recorded = recorded_sha256(dest)
    for label, want in (("published", expected), ("recorded at first download", recorded)):
        if want is not None and actual != want:
            if remove:
                path.unlink(missing_ok=True)
            fix = (
                "it was deleted; run again to fetch it anew"
                if remove
                else "replace it with the released file"
            )
            raise ValueError(
                f"{path}: sha256 {actual} does not match the {label} {want} ({sidecar(dest)}); {fix}"
            )
    if recorded is None:
        atomic_write_text(sidecar(dest), f"{actual}  {dest.name}\n")
    return actual


def _check_scheme(url: str, allow_http: bool) -> None:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("https", "file") or (scheme == "http" and allow_http):
        return
    raise ValueError(f"refusing to fetch {url}: only https:// (or file://) URLs are fetched")


def _total(response, start: int) -> int | None:
    """The full size of the file from a 200 (Content-Length) or 206 (Content-Range) response."""
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = _RANGE_RE.fullmatch(content_range.strip())
        if match is None or int(match[1]) != start:
            raise ValueError(f"server answered the range request from byte {start} with {content_range!r}")
        return None if match[3] == "*" else int(match[3])
    length = response.headers.get("Content-Length")
    return int(length) if length else None


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Download `url` into `part`, resuming from its current size; raise FetchError if it stops short."""
    from tqdm import tqdm

    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:  # 416: the range starts at the end, i.e. the part is complete
            raise
        return
    with response:
        resumed = start > 0 and getattr(response, "status", None) == 206
        if not resumed:
            start = 0
        total = _total(response, start) if resumed else _total(response, 0)
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.stem, disable=not progress
            ) as bar,
        ):
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"transfer of {url} stopped at {size} of {total} bytes")


def fetch(
    url: str,
    dest: str | os.PathLike,
    local_dir: str | os.PathLike | None = None,
    download: bool = True,
    sha256: str | None = None,
    progress: bool = True,
    allow_http: bool = False,
) -> Path:
    """The local file for `url` (see the module docstring); `download=False` or `EDM2LIB_OFFLINE=1` never
    touches the network. `allow_http` exists for tests against a local server only."""
    dest = Path(dest)
    local = Path(local_dir).expanduser() if local_dir else None
    if local is not None and (local / dest.name).is_file():
        path = local / dest.name
        _check(path, dest, sha256, remove=False)
        return path
    if dest.is_file():
        _check(dest, dest, sha256, remove=True)
        return dest
    _check_scheme(url, allow_http)
    if not download or os.environ.get("EDM2LIB_OFFLINE") == "1":
        raise FetchError(f"{dest.name} is not here and downloads are off: {_hint(url, dest, local)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _transfer(url, part, progress)
    except FetchError as e:
        raise FetchError(f"{e}; the next run resumes {part}, or {_hint(url, dest, local)}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"fetching failed ({e}): {_hint(url, dest, local)}") from None
    _check(part, dest, sha256, remove=True)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
