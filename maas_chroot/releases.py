"""Ubuntu releases: the one table of codenames, versions and cloud-image availability.

Both the sources (which cloud images exist) and the MAAS rules (which names are
reserved, which base images are valid) read it, so they can never disagree about
a release. The host's distro-info (``/usr/share/distro-info/ubuntu.csv``), when
installed, adds releases newer than this table, as MAAS's region does with its own
distro-info (``get_release_from_distro_info`` in canonical/maas).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import SourceError

DISTRO_INFO = "/usr/share/distro-info/ubuntu.csv"


@dataclass(frozen=True)
class Release:
    """An Ubuntu release. ``cloud_images``: cloud-images.ubuntu.com publishes it."""

    codename: str
    version: str
    cloud_images: bool = False


def _table(old: str, new: str) -> tuple[Release, ...]:
    out = [Release(c, v) for c, v in (w.split("=") for w in old.split())]
    out += [Release(c, v, cloud_images=True) for c, v in (w.split("=") for w in new.split())]
    return tuple(out)


#: Every Ubuntu release (MAAS reserves each codename: its image stream offers
#: ``ubuntu/<codename>``), oldest first; those from bionic on have cloud images.
RELEASES: tuple[Release, ...] = _table(
    "warty=4.10 hoary=5.04 breezy=5.10 dapper=6.06 edgy=6.10 feisty=7.04 gutsy=7.10 "
    "hardy=8.04 intrepid=8.10 jaunty=9.04 karmic=9.10 lucid=10.04 maverick=10.10 "
    "natty=11.04 oneiric=11.10 precise=12.04 quantal=12.10 raring=13.04 saucy=13.10 "
    "trusty=14.04 utopic=14.10 vivid=15.04 wily=15.10 xenial=16.04 yakkety=16.10 "
    "zesty=17.04 artful=17.10",
    "bionic=18.04 cosmic=18.10 disco=19.04 eoan=19.10 focal=20.04 groovy=20.10 "
    "hirsute=21.04 impish=21.10 jammy=22.04 kinetic=22.10 lunar=23.04 mantic=23.10 "
    "noble=24.04 oracular=24.10 plucky=25.04 questing=25.10 resolute=26.04 stonking=26.10")

#: Releases with cloud images a mirror may carry (end-of-life ones move to an archive
#: host: a 404 then names the URL), codename -> version.
CLOUD_RELEASES: Mapping[str, str] = MappingProxyType(
    {r.codename: r.version for r in RELEASES if r.cloud_images})


@functools.cache
def ubuntu_releases() -> Mapping[str, str]:
    """Codename -> version of every release: the table plus the host's distro-info."""
    known = {r.codename: r.version for r in RELEASES}
    try:
        with open(DISTRO_INFO, encoding="utf-8") as f:
            next(f, None)  # version,codename,series,created,...
            for line in f:
                cols = line.split(",")
                if len(cols) > 2 and cols[2].strip().isalpha():
                    known.setdefault(cols[2].strip(), cols[0].split()[0])
    except OSError:
        pass
    return MappingProxyType(known)


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines (os-release(5), lsb-release) as a dict, quotes removed."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def codename_of(name: str) -> str | None:
    """The codename of a release given by codename or version (any case), or None."""
    key = str(name).strip().lower()
    known = ubuntu_releases()
    if key in known:
        return key
    return next((c for c, v in known.items() if v == key), None)


def cloud_release(release: str) -> tuple[str, str]:
    """``"noble"``, ``"Noble"`` or ``"24.04"`` -> ``("noble", "24.04")``, for a release
    with cloud images; :class:`SourceError` listing them otherwise."""
    codename = codename_of(release)
    if codename is not None and codename in CLOUD_RELEASES:
        return codename, CLOUD_RELEASES[codename]
    valid = ", ".join(f"{c} ({v})" for c, v in CLOUD_RELEASES.items())
    raise SourceError(f"unknown Ubuntu release {release!r}; valid releases: {valid}",
                      hint="give a codename such as 'noble' or a version such as '24.04'")


def named_in(words: Iterable[str]) -> str | None:
    """The single Ubuntu codename named by the words (``noble-custom``, ``ubuntu 24.04``);
    None when none or several are named."""
    found = set()
    for text in words:
        for raw in re.split(r"[^a-z0-9.]+", text.lower()):
            token = raw.strip(".")
            if token and (codename := codename_of(token)) is not None:
                found.add(codename)
    return found.pop() if len(found) == 1 else None
