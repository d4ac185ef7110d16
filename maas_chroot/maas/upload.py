"""Uploading a custom image: the checks, the create request, the re-upload rules, the sync.

What MAAS does (canonical/maas, 3.4 to 3.8 and master):

* the maas CLI (``src/maascli/actions/boot_resources_create.py``) POSTs the metadata
  (name, title, architecture, filetype, size, sha256) as multipart, takes the newest set
  of the answer, which must hold exactly one file, and PUTs the bytes to its
  ``upload_uri`` in 4 MiB chunks unless the file is ``complete`` already (:mod:`.chunks`).
* the name: the bare name goes to MAAS on every version (:func:`.names.bare_name`);
  3.8 would store ``custom/foo`` as sent, where deploy cannot find it.
* ``BootResourceForm.save`` (``src/maasserver/forms/__init__.py``) reuses the resource of
  the same name and architecture, and keeps its first non-empty ``base_image`` (``if not
  resource.base_image``), so a rebuild on a newer Ubuntu would deploy with the old
  release's kernel and ephemeral. It also deletes the older sets' files as it makes the
  new set (``keep_old`` unset). So the old resource is checked *before* the POST.
* only 3.4 completes a file at once when it already stores that sha256 (it reuses the
  ``LargeFile``); from 3.5 a new file has no ``BootResourceFileSync`` row and every byte
  is sent again.
* from 3.5 each region controller keeps its own copy, and ``complete`` turns true when
  every region has one (``sync_progress`` in ``models/bootresourcefile.py``); the other
  regions copy the file once it is complete on the one we upload to.
* MAAS's nginx refuses bodies over 10 MiB (``client_max_body_size 10M``); other proxies
  often 1 MiB: ``chunk_size`` picks the PUT size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urljoin

from .. import arches, releases
from ..errors import ArchiveError, ArgumentError, MaasApiError, MaasCredentialsError
from . import api, names
from .chunks import Sender, resume_hint, size_and_sha256
from .resource import BootResource

if TYPE_CHECKING:
    from .client import MaasClient

logger = logging.getLogger(__name__)

#: Bytes per PUT, as the maas CLI and python-libmaas send them.
CHUNK_SIZE = 1 << 22
#: Seconds to wait, by default, for every region controller to hold a copy.
WAIT_TIMEOUT = 1800.0
_MIN_CHUNK = 64 << 10


class Sized(Protocol):          # maas_chroot.archive.PackResult, duck-typed
    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class Upload:
    """An upload to MAAS: :meth:`MaasClient.upload`'s arguments, and ``build(upload=)``.

    :meth:`send` does the work; see :meth:`MaasClient.upload` for what each field means.
    ``client`` may be None (a recipe's upload target): ``build()`` then makes one from
    ``profile`` (a ``maas login`` profile name) or the environment
    (:meth:`MaasClient.resolve`); credentials are never part of the value.
    """

    client: MaasClient | None
    name: str
    title: str | None = None
    architecture: str | None = None  # None: the image's; force: one that contradicts it
    base_image: str | None = None
    filetype: str | None = None
    force: bool = False
    replace: bool = False
    wait: bool = False
    wait_timeout: float = WAIT_TIMEOUT
    chunk_size: int = CHUNK_SIZE
    profile: str | None = None

    @property
    def shown(self) -> str:
        """``custom/<name>``, as the user sees the image."""
        return names.validate_name(self.name)

    def connected(self) -> MaasClient:
        """The client; :class:`MaasCredentialsError` when there is none yet."""
        if self.client is None:
            raise MaasCredentialsError(
                f"the upload of {self.name} has no MAAS client", url="",
                hint="give Upload(client=MaasClient(...)), or build() it, which makes one from "
                     "the upload's profile or MAAS_URL and MAAS_API_KEY")
        return self.client

    def send(self, path: str | os.PathLike[str] | Sized, *,
             progress: bool | None = None) -> BootResource:
        """Upload ``path`` (a file, or a ``PackResult``); see :meth:`MaasClient.upload`."""
        if self.architecture is not None:
            names.validate_architecture(self.architecture)
        if self.filetype is not None:
            names.validate_filetype(self.filetype)
        if (not isinstance(self.chunk_size, int)
                or not _MIN_CHUNK <= self.chunk_size <= api.MAAS_BODY_LIMIT):
            raise ArgumentError(f"chunk_size={self.chunk_size!r}: give {_MIN_CHUNK} to "
                                f"{api.MAAS_BODY_LIMIT} bytes", hint="MAAS's own nginx "
                                "refuses bodies over 10 MiB; the maas CLI sends 4 MiB")
        file = Path(path) if isinstance(path, (str, os.PathLike)) else Path(path.path)
        if not file.is_file():
            raise ArchiveError(f"cannot upload {file}: it is not a file (or does not exist)",
                               path=file, hint="give the path of a packed image, e.g. the "
                                               "output of maas-chroot build -o FILE")
        found = getattr(path, "arch", None) or names.sniff_arch(
            file, self.filetype or names.infer_filetype(file),
            required=self.architecture is None)
        architecture = arches.maas_architecture(self.architecture, found, force=self.force)
        return dataclasses.replace(self, architecture=architecture)._send(path, file,
                                                                          progress=progress)

    def _send(self, path: str | os.PathLike[str] | Sized, file: Path, *,
              progress: bool | None) -> BootResource:
        """:meth:`send` once the architecture is settled."""
        client, shown = self.connected(), self.shown
        bare = shown.removeprefix("custom/")
        base_image = (names.validate_base_image(self.base_image)
                      if self.base_image is not None else None)
        filetype = self.filetype or names.infer_filetype(file)   # cheap checks first
        if base_image is None:
            found = (names.sniff_ubuntu_release(file, filetype)
                     or releases.named_in([shown, self.title or ""]))
            if found:
                base_image = f"ubuntu/{found}"
            else:
                logger.warning("%s: base_image not given and not Ubuntu-recognisable; MAAS "
                               "will use its commissioning release", shown)
        if isinstance(path, (str, os.PathLike)):
            size, sha256 = size_and_sha256(file, chunk_size=self.chunk_size,
                                           progress_flag=progress)
        else:
            size, sha256 = int(path.size), str(path.sha256)
            if file.stat().st_size != size:
                raise MaasApiError(f"{file} is {file.stat().st_size} bytes but its PackResult "
                                   f"says {size}: the file changed since it was packed",
                                   url=client.api_url, hint="pack it again")
        if size == 0:
            raise MaasApiError(f"{file} is empty", url=client.api_url)
        fields = {"name": bare, "title": self.title or bare, "architecture": self.architecture,
                  "filetype": filetype, "size": str(size), "sha256": sha256}
        if base_image:
            fields["base_image"] = base_image
        self._make_room(bare, base_image)
        logger.info("creating boot resource %s (%s, %d bytes, sha256 %s)", shown, filetype,
                    size, sha256)
        created = client._json("POST", "boot-resources/",
                               files={k: (None, v) for k, v in fields.items()})
        resource = self._check_answer(BootResource.from_json(created), bare, base_image)
        rfile = api.the_file(created, client.api_url)
        if rfile.get("complete"):
            logger.info("MAAS already stores the content of %s (same sha256): nothing to send",
                        shown)
        else:
            Sender(client, resource, urljoin(client.api_url, str(rfile["upload_uri"])),
                   size=size, chunk_size=self.chunk_size).send(file, progress_flag=progress)
        final = self._read_back(resource)
        if final.complete is False:
            self._report_sync(final)
            if self.wait:
                final = client.wait(final, timeout=self.wait_timeout, progress=progress)
        return final

    def _make_room(self, bare: str, base_image: str | None) -> None:
        """Refuse (or with ``replace`` delete) an old resource MAAS would reuse wrongly."""
        client = self.connected()
        for old in client.find(bare, architecture=self.architecture):
            what = f"{old.full_name} {old.architecture} (boot resource {old.id})"
            if self.replace:
                client._call("DELETE", f"boot-resources/{old.id}/")
                logger.info("replace: deleted %s, stored as %r (until this upload completes, "
                            "MAAS holds no image of that name)", what, old.name)
            elif old.name != bare:
                logger.warning(
                    "MAAS also holds %s stored as %r, a name MAAS 3.8 keeps when sent the "
                    "custom/ prefix; deploy looks up %r, so that one cannot be deployed: "
                    "delete it (maas-chroot delete --id %d), or upload with replace",
                    what, old.name, bare, old.id)
            elif base_image is None:
                continue
            elif "base_image" not in old.raw and api.series(client.version()) < (3, 5):
                logger.warning("%s exists, and MAAS %s does not report its base_image: if it "
                               "is not %s, MAAS keeps the old one (upload with replace to be "
                               "sure)", what, client.version(), base_image)
            elif old.base_image and old.base_image != base_image:
                raise MaasApiError(
                    f"{what} exists with base_image {old.base_image}, and MAAS keeps a "
                    f"resource's first base image (`if not resource.base_image` in "
                    f"BootResourceForm.save): uploaded with base_image {base_image} it would "
                    f"still deploy with {old.base_image}'s kernel and ephemeral environment",
                    url=urljoin(client.api_url, f"boot-resources/{old.id}/"),
                    hint="replace=True (--replace) deletes the old image and uploads it "
                         "afresh; or upload it under another name")

    def _check_answer(self, resource: BootResource, bare: str,
                      base_image: str | None) -> BootResource:
        """Compare what MAAS made with what was asked (whatever its version)."""
        url = urljoin(self.connected().api_url, f"boot-resources/{resource.id}/")
        if not names.same_name(resource.name, bare) or resource.architecture != \
                self.architecture:
            raise MaasApiError(f"asked MAAS for custom/{bare} {self.architecture}, it made "
                               f"{resource.name!r} {resource.architecture} (boot resource "
                               f"{resource.id})", url=url, hint=resume_hint(resource))
        kept = resource.base_image
        if base_image and kept and kept != base_image:
            raise MaasApiError(
                f"MAAS kept base_image {kept} for {resource.full_name} although {base_image} "
                "was sent (it keeps a resource's first base image), and it has deleted the "
                "old file already", url=url, hint="upload again with replace=True (--replace)"
                ", which deletes the resource first")
        return resource

    def _read_back(self, resource: BootResource) -> BootResource:
        try:
            return self.connected().get(resource.id)
        except MaasApiError as e:       # the last PUT's 200 already proved the sha256
            logger.warning("uploaded %s (MAAS verified its sha256), but reading it back "
                           "failed: %s", resource.full_name, e.message)
            return dataclasses.replace(resource, complete=None, progress=None)

    def _report_sync(self, res: BootResource) -> None:
        try:
            regions = f"{self.connected().regions()} region controllers"
        except MaasApiError:
            regions = "its region controllers"
        logger.info("uploaded %s (MAAS verified its sha256); syncing to %s: %.0f%% of the "
                    "copies are there, and MAAS deploys it once all are%s", res.full_name,
                    regions, res.progress or 0.0,
                    "" if self.wait else " (wait=True or --wait waits for that)")
