"""MAAS: the API 2.0 client that uploads custom boot resources, and MAAS's naming rules.

:mod:`.client` holds :class:`MaasClient`; :mod:`.api` the HTTP and JSON details and the
``maas login`` profiles; :mod:`.names` what MAAS accepts as a name, architecture, base
image and filetype.
"""

from .client import CHUNK_SIZE, FILETYPES, BootResource, MaasClient, Upload, validate_name

__all__ = ["CHUNK_SIZE", "FILETYPES", "BootResource", "MaasClient", "Upload", "validate_name"]
