"""The maas-chroot argument parser (private to the CLI): verbs, flags and --help examples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..maas.upload import CHUNK_SIZE, WAIT_TIMEOUT

PROG = "maas-chroot"


class UsageError(Exception):
    """Bad command-line usage (reported like every other error: one line, exit 1)."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never exit: main() reports it
        raise UsageError(message, self.prog)


class _AppendCommand(argparse.Action):
    """--run CMD and --script FILE share one ordered list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(Path(values) if option_string == "--script" else str(values))
        setattr(namespace, self.dest, items)


class _AppendWords(argparse.Action):
    """--install a --install b,c --install 'd e' -> [a, b, c, d, e]."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items += [w for w in str(values).replace(",", " ").split() if w]
        setattr(namespace, self.dest, items)


def _copy_spec(value: str) -> tuple[str, str]:
    src, sep, dest = value.rpartition(":")
    if not sep or not src or not dest.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not SRC:DEST (DEST is an absolute path inside the image)")
    return dest, src


EXAMPLES = {
    "build": """examples:
  # the classic procedure, in one command (Ubuntu 20.04 root tarball, upload to MAAS):
  maas-chroot build focal --format root.tar.xz --upgrade \\
      --install emacs-nox --install jq --install tree -o focal-custom.tgz \\
      --upload custom/focal-custom --title 'Ubuntu 20.04 Custom Image'
  # a noble squashfs, a local file and a script, through a caching proxy, kept for debugging:
  maas-chroot build noble -o noble.tgz --install jq --copy ./app.conf:/etc/app.conf \\
      --script ./setup.sh --apt-proxy http://squid:3128 --keep-rootfs /srv/noble-root
  # a deployable Debian image bootstrapped from this machine's mirror, proven to boot
  # (in QEMU) before it is uploaded:
  maas-chroot build bootstrap:bookworm -o bookworm.tgz --boot-test \\
      --install linux-image-amd64,systemd-sysv,udev,cloud-init,netplan.io,openssh-server \\
      --upload custom/bookworm --profile admin
  # an arm64 image, built on this amd64 host (emulated; maas-chroot binfmt --enable arm64):
  maas-chroot build bootstrap:bookworm --arch arm64 --install jq -o bookworm-arm64.tgz
  # every image of a recipe, or some; flags override it; nightly, only what changed:
  maas-chroot build -f images.toml
  maas-chroot build -f images.toml web --install htop
  maas-chroot build -f images.toml --if-changed
  # a local archive or rootfs directory, no network inside the chroot:
  maas-chroot build ./rootfs.tar.xz --network none --run 'echo hi > /etc/motd' -o out.tgz

sources: RELEASE (noble, 24.04), URL, ARCHIVE, DIRECTORY, bootstrap:SUITE
MAAS credentials: --profile NAME, or --maas-url URL --api-key KEY [--cacerts FILE], or the
environment variables MAAS_URL and MAAS_API_KEY (or MAAS_PROFILE).""",
    "check": """examples:
  maas-chroot check -f images.toml          # every image: keys, types, sources, names, files
  maas-chroot check -f images.toml web db   # some of them""",
    "fetch": """examples:
  maas-chroot fetch noble                         # verified squashfs, cached; prints its path
  maas-chroot fetch jammy --format root.tar.xz --arch arm64
  maas-chroot fetch https://host/img.tar.xz --sha256 0123...abcd
  maas-chroot fetch noble --mirror http://local-mirror/cloud-images --keyring ./ubuntu.gpg""",
    "extract": """examples:
  maas-chroot extract noble-server-cloudimg-amd64.squashfs /srv/work/noble
  maas-chroot extract focal-server-cloudimg-amd64-root.tar.xz /srv/work/focal""",
    "shell": """examples:
  maas-chroot shell /srv/work/noble                          # interactive root shell
  maas-chroot shell /srv/work/noble -- apt-get install -y jq  # one command, then exit
  maas-chroot shell /srv/work/noble --network none --bind /srv/debs:/debs -- ls /debs""",
    "pack": """examples:
  maas-chroot pack /srv/work/noble noble-custom.tgz
  maas-chroot pack /srv/work/noble noble-custom.tgz --sysprep --level 1  # scrub, pack""",
    "upload": """examples:
  maas-chroot upload noble-custom.tgz --name custom/noble-custom --profile admin --wait
  maas-chroot upload noble-custom.tgz --name custom/noble-custom --replace \\
      --maas-url https://maas:5443/MAAS --api-key KEY --cacerts maas-ca.pem
  MAAS_URL=http://maas:5240/MAAS MAAS_API_KEY=... \\
      maas-chroot upload img.tgz --name custom/img --title 'My image' --base-image ubuntu/noble""",
    "boot-test": """examples:
  maas-chroot boot-test noble-custom.tgz              # deploy as curtin would, boot, report
  maas-chroot boot-test img.tgz --boots 2             # two fresh deployments: two identities
  maas-chroot boot-test noble.tgz --kernel linux-generic --accel tcg --boot-timeout 1200""",
    "images": """examples:
  maas-chroot images --profile admin
  maas-chroot images --maas-url https://maas:5443/MAAS --api-key KEY --cacerts maas-ca.pem""",
    "delete": """examples:
  maas-chroot delete custom/noble-custom --profile admin
  maas-chroot delete noble-custom --architecture arm64/generic --profile admin
  maas-chroot delete --id 12 --maas-url http://maas:5240/MAAS --api-key KEY""",
    "recover": """examples:
  maas-chroot recover /srv/work/noble   # after a session was killed (SIGKILL, power loss)""",
    "binfmt": """examples:
  maas-chroot binfmt --status             # which architectures run here, and how
  maas-chroot binfmt --enable arm64       # mount binfmt_misc, enable qemu-aarch64 (kept)
  maas-chroot build bootstrap:bookworm --arch arm64 --install jq -o arm64.tgz

An arm64 image built on an amd64 host runs its commands through qemu-user: Debian's
qemu-user-static handlers (F flag: nothing of the emulator goes into the image), enabled
with binfmt-support (apt install qemu-user-static binfmt-support arch-test).""",
}


def _verb(sub: Any, name: str, help: str,
          common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=EXAMPLES[name], parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return p


def _source_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("source")
    g.add_argument("--format", dest="fmt", default="squashfs", choices=("squashfs", "root.tar.xz"),
                   help="cloud-image format (default: squashfs)")
    g.add_argument("--arch", help="architecture (default: amd64; the host's for bootstrap:)")
    g.add_argument("--stream", default="release", choices=("release", "daily"))
    g.add_argument("--mirror", help="cloud-images mirror URL, or the apt mirror for bootstrap:")
    g.add_argument("--keyring", help="GPG keyring that signs the source (SHA256SUMS.gpg, or "
                                     "the archive for bootstrap:)")
    g.add_argument("--verify", choices=("signature", "checksum", "none"),
                   help="how to verify a download (default: the strongest available)")
    g.add_argument("--sha256", help="expected sha256 of a URL or local file")
    g.add_argument("--sums-url", help="a SHA256SUMS file listing a URL (signed with .gpg "
                                      "beside it when --verify signature)")
    g.add_argument("--cache-dir", help="download cache (default: ~/.cache/maas-chroot)")


def _size(value: str) -> int:
    """``4194304``, ``512K``, ``1M`` -> bytes."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (e.g. 512K, 1M)") from None


def _maas_login(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MAAS")
    g.add_argument("--profile", help="a `maas login` profile name (its --cacerts are used)")
    g.add_argument("--maas-url", help="MAAS URL, e.g. http://maas:5240/MAAS or "
                                      "https://maas:5443/MAAS")
    g.add_argument("--api-key", help="MAAS API key (consumer:token:secret)")
    g.add_argument("--cacerts", metavar="FILE", help="PEM file of the CA that signed MAAS's "
                                                     "TLS certificate")


def _maas_flags(p: argparse.ArgumentParser, *, name_flag: str) -> None:
    g = p.add_argument_group("MAAS upload")
    g.add_argument(name_flag, dest="name", metavar="NAME",
                   help="boot-resource name, e.g. custom/noble-custom")
    g.add_argument("--title", help="title shown in MAAS")
    g.add_argument("--architecture", help="MAAS architecture (default: the image's, e.g. "
                                          "arm64/generic)")
    g.add_argument("--force-architecture", dest="force", action="store_true",
                   help="upload with --architecture even if it contradicts the image")
    g.add_argument("--base-image", help="e.g. ubuntu/noble (default: read from the image)")
    g.add_argument("--replace", action="store_true",
                   help="delete an existing image of this name and architecture first (if the "
                        "upload then fails, MAAS holds neither)")
    g.add_argument("--wait", action="store_true",
                   help="wait until every region controller holds a copy")
    g.add_argument("--wait-timeout", type=float, default=WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"how long --wait waits (default: {WAIT_TIMEOUT:g})")
    g.add_argument("--chunk-size", type=_size, default=CHUNK_SIZE, metavar="SIZE",
                   help="bytes per PUT (default: 4M; smaller behind a proxy's body limit)")
    _maas_login(p)


def _boot_flags(p: argparse.ArgumentParser, *, in_build: bool) -> None:
    g = p.add_argument_group("boot test")
    if in_build:
        g.add_argument("--boot-test", action="store_true",
                       help="deploy the packed image as curtin would and boot it in QEMU "
                            "before uploading; a failing image is not uploaded")
    g.add_argument("--boots", type=int, default=1 if not in_build else None, metavar="N",
                   help="fresh deployments to boot (2 proves unique identities)")
    g.add_argument("--kernel", metavar="PKG", help="kernel package to install into the "
                                                   "deployed copy when the image has none")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=None,
                   help="QEMU accelerator (default auto: KVM if a guest really boots with it)")
    g.add_argument("--boot-timeout", dest="boot_timeout", type=float, metavar="S",
                   help="seconds a boot has to report (default 180 KVM, 900 TCG)")
    g.add_argument("--memory", type=int, default=None, metavar="MIB",
                   help="guest memory (default 1024)")
    g.add_argument("--no-fail-fast", dest="fail_fast", action="store_false",
                   help="boot even when the deployment already fails")


def _common(*, top: bool) -> argparse.ArgumentParser:
    """-v/-q/--debug/--no-progress, accepted before and after the verb.

    The verbs' copies default to SUPPRESS so they never overwrite a flag given
    before the verb (argparse copies a subparser's defaults over the namespace).
    """
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="say more (-vv: every command run)")
    g.add_argument("-q", "--quiet", action="store_true", default=default(False),
                   help="only errors, no progress bars")
    g.add_argument("--debug", action="store_true", default=default(False),
                   help="debug log, and tracebacks on errors")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=default(None), help="no progress bars")
    return common


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``shell``, everything after the first ``--`` is the command."""
    if "--" in argv:
        cut = argv.index("--")
        args = parser().parse_args(argv[:cut])
        if args.verb == "shell":
            args.cmd = [*args.cmd, *argv[cut + 1:]]
            return args
    return parser().parse_args(argv)


def parser() -> argparse.ArgumentParser:
    common = _common(top=False)
    top = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                  parents=[_common(top=True)],
                  description="Turn an Ubuntu cloud image into a custom MAAS image, without a VM.",
                  epilog="run `maas-chroot VERB --help` for a verb's flags and examples.\n\n"
                         + EXAMPLES["build"].split("\n\n")[0])
    sub = top.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    b = _verb(sub, "build", "fetch, extract, customise, sysprep, pack and upload an image "
                            "(or each image of a recipe)", common)
    b.add_argument("targets", nargs="*", metavar="SOURCE | NAME",
                   help="the source; with -f, the recipe's images to build (default: all)")
    b.add_argument("-f", "--file", metavar="RECIPE",
                   help="a TOML recipe of images (flags given here override it)")
    b.add_argument("-o", "--output", metavar="OUT",
                   help="the image to write (.tgz for MAAS; .tar.xz, .tar.bz2)")
    b.add_argument("--if-changed", action="store_true",
                   help="build only if the source, the spec or maas-chroot changed since the "
                        "build recorded in OUT.build.json")
    _source_flags(b)
    b.add_argument("--variant", default="minbase", help="mmdebstrap variant for bootstrap: "
                                                        "(default: minbase)")
    b.add_argument("--include", action=_AppendWords, default=[], metavar="PKG",
                   help="packages mmdebstrap installs itself, for bootstrap: (repeatable)")
    c = b.add_argument_group("customise")
    c.add_argument("--install", dest="packages", action=_AppendWords, default=[], metavar="PKG",
                   help="install a package (repeatable)")
    c.add_argument("--remove", dest="remove", action=_AppendWords, default=[], metavar="PKG",
                   help="remove a package (repeatable), then autoremove")
    c.add_argument("--purge", action="store_true", help="purge removed packages' config too")
    c.add_argument("--upgrade", action="store_true", help="apt-get dist-upgrade")
    c.add_argument("--run", dest="commands", action=_AppendCommand, default=[], metavar="CMD",
                   help="run CMD with /bin/sh -c inside the image (repeatable, in order)")
    c.add_argument("--script", dest="commands", action=_AppendCommand, metavar="FILE",
                   help="copy a host script in and run it (repeatable, in order with --run)")
    c.add_argument("--copy", dest="files", type=_copy_spec, action="append", default=[],
                   metavar="SRC:DEST", help="copy a host file or directory into the image")
    c.add_argument("--apt-source", dest="apt_sources", action="append", default=[],
                   metavar="LINE",
                   help="extra apt source: '[deb] [signed-by=KEY] URI SUITE COMP..'")
    c.add_argument("--apt-key", metavar="FILE", help="key for --apt-source lines without one")
    c.add_argument("--apt-proxy", metavar="URL", help="apt proxy for the build (not kept)")
    c.add_argument("--network", choices=("host", "none"), default="host",
                   help="none: loopback only inside the chroot")
    c.add_argument("--no-sysprep", dest="sysprep", action="store_false",
                   help="do not scrub the image (machine-id, ssh keys, logs...)")
    c.add_argument("--sysprep-keep", action="append", default=[], metavar="OP",
                   help="skip one sysprep operation (repeatable)")
    w = b.add_argument_group("work")
    w.add_argument("--keep-rootfs", metavar="DIR", help="customise in DIR and keep it")
    w.add_argument("--in-place", action="store_true",
                   help="customise a SOURCE directory itself instead of a copy")
    w.add_argument("--workdir", metavar="DIR", help="parent of the temporary work dir "
                                                    "(default: /var/tmp)")
    w.add_argument("--level", type=int, default=6, help="compression level (default: 6)")
    _boot_flags(b, in_build=True)
    _maas_flags(b, name_flag="--upload")
    for action in b._actions:  # only what is given: a recipe gives the rest
        if action.option_strings:
            action.default = argparse.SUPPRESS

    k = _verb(sub, "check", "check a recipe without building anything", common)
    k.add_argument("names", nargs="*", metavar="NAME", help="the images to check (default: all)")
    k.add_argument("-f", "--file", metavar="RECIPE", required=True, help="the TOML recipe")

    f = _verb(sub, "fetch", "download and verify a cloud image (cached); print its path", common)
    f.add_argument("source", metavar="SOURCE")
    _source_flags(f)

    e = _verb(sub, "extract", "extract a root tarball or squashfs into a directory", common)
    e.add_argument("archive", metavar="ARCHIVE")
    e.add_argument("dest", metavar="DEST")

    s = _verb(sub, "shell", "a root shell (or one command) in a prepared chroot", common)
    s.add_argument("root", metavar="DIR")
    s.add_argument("--network", choices=("host", "none"), default="host")
    s.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                   help="bind-mount a host path into the chroot (repeatable)")
    s.add_argument("cmd", nargs="*", metavar="-- CMD",
                   help="a command to run instead of an interactive shell (after --)")
    s.set_defaults(cmd=[])

    p = _verb(sub, "pack", "pack a rootfs directory into a deterministic TGZ", common)
    p.add_argument("root", metavar="DIR")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--level", type=int, default=6, help="compression level (default: 6)")
    p.add_argument("--threads", type=int, help="compression threads (default: all cores)")
    p.add_argument("--sysprep", action="store_true", help="scrub the rootfs first")

    u = _verb(sub, "upload", "upload an image file to MAAS as a custom boot resource", common)
    u.add_argument("file", metavar="FILE")
    u.add_argument("--filetype", help="tgz, tbz, txz, ddgz... (default: from the content)")
    _maas_flags(u, name_flag="--name")

    t = _verb(sub, "boot-test", "deploy an image as curtin would, boot it in QEMU and report "
                                "whether first boot works", common)
    t.add_argument("image", metavar="IMAGE")
    t.add_argument("--workdir", metavar="DIR", help="scratch space (default: /var/tmp)")
    t.add_argument("--log-dir", dest="log_dir", metavar="DIR",
                   help="where the console logs go (default: beside the image)")
    _boot_flags(t, in_build=False)

    i = _verb(sub, "images", "list the custom images on MAAS", common)
    i.add_argument("--architecture", help="only this architecture, e.g. amd64/generic")
    _maas_login(i)

    d = _verb(sub, "delete", "delete a custom image from MAAS", common)
    d.add_argument("name", metavar="NAME", nargs="?", help="custom/NAME or NAME")
    d.add_argument("--id", type=int, help="the boot resource's id instead of NAME")
    d.add_argument("--architecture", help="which one, when NAME exists for several")
    _maas_login(d)

    r = _verb(sub, "recover", "undo what a killed chroot session left in a rootfs", common)
    r.add_argument("root", metavar="DIR")

    m = _verb(sub, "binfmt", "show or enable how this host runs other architectures' binaries",
              common)
    what = m.add_mutually_exclusive_group()
    what.add_argument("--status", nargs="?", const="", default="", metavar="ARCH",
                      help="how each architecture (or ARCH) runs here (the default)")
    what.add_argument("--enable", metavar="ARCH",
                      help="mount binfmt_misc and enable ARCH's qemu-user handler (changes the "
                           "kernel's state until reboot)")
    return top
