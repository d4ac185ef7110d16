"""MAAS: the API 2.0 client that uploads custom boot resources, and MAAS's naming rules.

:mod:`.client` holds :class:`MaasClient` (and the image lifecycle); :mod:`.upload` the
upload (:class:`Upload`) and :mod:`.chunks` its bytes; :mod:`.resource` the
:class:`BootResource` MAAS reports; :mod:`.api` the HTTP and JSON details; :mod:`.tls`
what is trusted; :mod:`.profiles` the ``maas login`` profiles; :mod:`.names` what MAAS
accepts as a name, architecture, base image and filetype.
"""

from .client import MaasClient
from .names import FILETYPES, bare_name, validate_name
from .resource import BootResource, table
from .upload import CHUNK_SIZE, Upload

__all__ = ["CHUNK_SIZE", "FILETYPES", "BootResource", "MaasClient", "Upload", "bare_name",
           "table", "validate_name"]
