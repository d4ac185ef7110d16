"""Sources: what an image is, where it lives, how it is fetched and verified, or bootstrapped.

:mod:`.image` names images (:func:`cloud_image`, :func:`url_source`) and how they are
verified; :mod:`.plans` settles a build's source; :mod:`.fetching` downloads into the
cache over :mod:`.http`, checked by :mod:`.verify`; :mod:`.bootstrap` builds a rootfs
with mmdebstrap from the mirror :mod:`.hostapt` reads from this machine's apt.
"""

from .fetching import cache_path, default_cache_dir, fetch
from .image import (
    ARCHITECTURES,
    DEFAULT_MIRROR,
    FORMATS,
    MIRROR_ENV,
    STREAMS,
    VERIFY_MODES,
    ImageSource,
    Verify,
    cloud_image,
    default_mirror,
    is_url,
    url_source,
)
from .plans import SourceOptions, SourcePlan, plan

__all__ = ["ARCHITECTURES", "DEFAULT_MIRROR", "FORMATS", "MIRROR_ENV", "STREAMS",
           "VERIFY_MODES", "ImageSource", "SourceOptions", "SourcePlan", "Verify",
           "cache_path", "cloud_image", "default_cache_dir", "default_mirror", "fetch",
           "is_url", "plan", "url_source"]
