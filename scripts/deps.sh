# Sourced by scripts/test, scripts/demo and scripts/bench: install what maas_chroot needs
# on a fresh Debian/Ubuntu machine, as root, into a project virtualenv (.venv).
# Idempotent and quick when everything is already there. qemu-user-static, binfmt-support
# and arch-test are for foreign-architecture images (where the init system starts
# binfmt-support, installing them enables the handlers; elsewhere
# `maas-chroot binfmt --enable ARCH` does, when asked).

APT_PACKAGES="libarchive13 squashfs-tools mmdebstrap gnupg gpgv pigz acl attr libcap2-bin
  apt-utils iproute2 util-linux mount xz-utils zstd bzip2 ca-certificates python3 python3-venv
  python3-pip qemu-system-x86 e2fsprogs fdisk qemu-user-static binfmt-support arch-test"

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$0: must run as root (it mounts, chroots and installs packages); try: sudo $0" >&2
    exit 1
  fi
}

install_apt() {
  missing=""
  for p in $APT_PACKAGES "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "+ apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

# make_venv EXTRAS: create .venv with the interpreter in $PYTHON (default python3, 3.10+)
# and install the package editable with the given extras.
make_venv() {
  top=$(pwd)   # callers cd to the repository top first
  py=${PYTHON:-python3}
  venv="$top/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "+ $py -m venv $venv"
    "$py" -m venv "$venv"
  fi
  stamp="$venv/.installed-$1"
  if [ ! -e "$stamp" ] || [ "$top/setup.cfg" -nt "$stamp" ]; then
    echo "+ pip install -e .[$1]"
    log="$venv/pip-install.log"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$top[$1]" >"$log" 2>&1 \
      || { cat "$log" >&2; echo "pip install failed (log: $log)" >&2; exit 1; }
    touch "$stamp"
  fi
  PATH="$venv/bin:$PATH"
  export PATH
}
