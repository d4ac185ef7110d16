"""The bytes of an upload: the sha256 pass, and the PUTs of the chunks, with recovery.

What MAAS does with a chunk (``BootResourceFileUploadHandler.update`` in canonical/maas
``src/maasserver/api/boot_resources.py``, the same order of checks 3.4 to 3.8): it appends
the body at the size it has stored, with no offset header; refuses an empty body ("Missing
data."), a body shorter than its Content-Length, a chunk for a complete file ("Cannot upload
to a complete file.", per region from 3.5) and one past the end ("Too much data
received."); and checks the sha256 when the last byte arrives ("Saved content does not
match given SHA256 value."). So a chunk that may or may not have arrived is never sent
again blindly: the resource is read back, and the upload goes on only when what MAAS
stored proves where it stands (:func:`.api.stored_bytes`, which knows the region count).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import requests

from .. import progress
from ..errors import MaasApiError
from . import api
from .resource import BootResource

if TYPE_CHECKING:
    from .client import MaasClient

logger = logging.getLogger(__name__)

_MAX_RECOVERIES = 3
#: 3.8's answer when the first chunk meets a complete file of the same sha256 on disk.
_FULL = "Too much data received."


def size_and_sha256(file: Path, *, chunk_size: int, progress_flag: bool | None
                    ) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    total = file.stat().st_size
    with open(file, "rb") as f, progress.bar(progress_flag, total=total,
                                             desc=f"sha256 {file.name}") as bar:
        while n := f.readinto(view):
            h.update(view[:n])
            size += n
            bar.update(n)
    return size, h.hexdigest()


def resume_hint(resource: BootResource) -> str:
    return (f"MAAS keeps the incomplete boot resource {resource.id} ({resource.full_name}); "
            f"delete it with `maas-chroot delete --id {resource.id}` (or "
            f"MaasClient(...).delete({resource.id}), `maas $PROFILE boot-resource delete "
            f"{resource.id}`) and run the upload again")


class Sender:
    """Sends one file to one ``upload_uri``, ``chunk_size`` bytes per PUT."""

    def __init__(self, client: MaasClient, resource: BootResource, upload_url: str, *,
                 size: int, chunk_size: int) -> None:
        self.client, self.resource, self.url = client, resource, upload_url
        self.size, self.chunk_size = size, chunk_size

    def send(self, file: Path, *, progress_flag: bool | None) -> None:
        size, url, resource = self.size, self.url, self.resource
        buf = bytearray(self.chunk_size)
        view = memoryview(buf)
        offset, recoveries, refilled = 0, 0, False
        with open(file, "rb") as f, progress.bar(progress_flag, total=size,
                                                 desc=f"upload {resource.full_name}") as bar:
            while offset < size:
                n = f.readinto(view)
                if not n:
                    raise MaasApiError(f"{file} shrank while uploading (at byte {offset} of "
                                       f"{size})", url=url, hint=resume_hint(resource))
                # The reused buffer goes out as is (urllib3 sends any buffer object).
                body = cast(bytes, buf if n == self.chunk_size else buf[:n])
                failure = self._put(body, n)
                if (isinstance(failure, requests.Response) and offset == 0 and not refilled
                        and failure.status_code == 400 and api.body(failure) == _FULL):
                    # MAAS 3.8 appends in "ab" mode to image-storage/<filename_on_disk>,
                    # which a re-upload of content it already holds shares: the first
                    # chunk finds the file full, and append_chunk unlinks it before
                    # answering 400 (SyncLocalBootResourceFile.append_chunk in
                    # src/maasservicelayer/utils/image_local_files.py). Nothing was
                    # stored, so the first chunk is sent again, once. Other boot
                    # resources of the same sha256 lose that region's copy: say so.
                    logger.warning("MAAS (3.8) held this content on disk already and "
                                   "dropped it on the first chunk; sending it again. Other "
                                   "boot resources with sha256 %s lose that copy too: "
                                   "upload them again", self.resource.sha256)
                    refilled = True
                    failure = self._put(body, n)
                if failure is not None:
                    if isinstance(failure, requests.Response) and failure.status_code < 500:
                        raise api.api_error(failure, hint=resume_hint(resource))
                    if self._recover(failure, offset=offset, n=n):
                        bar.update(size - offset)
                        return
                    recoveries += 1
                    if recoveries > _MAX_RECOVERIES:
                        raise MaasApiError(
                            f"upload of {resource.full_name} (boot resource {resource.id}) "
                            f"gave up after {recoveries} failed chunks; MAAS has "
                            f"{offset + n} of {size} bytes", url=url,
                            hint="check the network to MAAS; " + resume_hint(resource))
                offset += n
                bar.update(n)

    def _put(self, body: bytes, n: int) -> requests.Response | Exception | None:
        """None when MAAS answered 200, else the answer or the transport error."""
        try:
            r = self.client._request("PUT", self.url, data=body, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(n)})
        except requests.RequestException as e:
            return e
        return None if r.status_code == 200 else r

    def _recover(self, failure: requests.Response | Exception, *, offset: int, n: int) -> bool:
        """A chunk [offset, offset+n) failed: go on only if MAAS proves it stored it.

        Returns True when MAAS has the whole file (verified), False to send the next chunk.
        """
        resource, size, url = self.resource, self.size, self.url
        what = (f"HTTP {failure.status_code}: {api.body(failure)}"
                if isinstance(failure, requests.Response) else f"{type(failure).__name__}: "
                f"{failure}")
        logger.warning("chunk at byte %d of %s failed (%s); reading the resource back",
                       offset, resource.full_name, what)
        try:
            rset = api.set_of(self.client._json("GET", f"boot-resources/{resource.id}/"), url)
            if rset.get("complete"):
                return True             # MAAS verified the sha256 of the whole file
            stored = api.stored_bytes(rset, regions=_regions(self.client))
        except MaasApiError as e:
            raise MaasApiError(
                f"upload of {resource.full_name} (boot resource {resource.id}) stopped at byte "
                f"{offset} of {size}: the chunk failed ({what}) and MAAS could not be asked "
                f"what it stored ({e.message})", url=url, hint=resume_hint(resource)) from e
        if stored is not None and stored >= size:
            # Only a file whose sha256 MAAS verified is copied to other regions, so copies
            # summing to a whole file mean the region we upload to has it, verified.
            return True
        if stored == offset + n:
            logger.info("MAAS stored the chunk at byte %d: going on", offset)
            return False
        seen = "unknown" if stored is None else str(stored)
        raise MaasApiError(
            f"upload of {resource.full_name} (boot resource {resource.id}) stopped: the chunk "
            f"at byte {offset} (+{n}) of {size} failed ({what}); MAAS reports {seen} bytes "
            "stored, so it cannot safely go on (MAAS appends each chunk without an offset, a "
            "re-sent chunk could be stored twice)", url=url, hint=resume_hint(resource))


def _regions(client: MaasClient) -> int:
    """Region controllers whose copies MAAS sums in ``progress``: one store on 3.4."""
    if api.series(client.version()) < (3, 5):
        return 1
    return client.regions()

