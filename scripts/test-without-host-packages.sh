#!/usr/bin/env bash
# Runs the tests as on a machine without the host packages: in a private mount
# namespace, every program, kernel and Python module that the packages of
# scripts/host-packages.txt installed (and the packages they depend on, other
# than libraries and what Debian counts as essential) is made absent, by an
# overlay with whiteouts over the directories that hold them. Nothing changes
# outside this command. Every suite that needs one of them must then skip,
# naming it; the run must end with 0 failed.
#
#   scripts/test-without-host-packages.sh                       npm test
#   scripts/test-without-host-packages.sh test/integration/x.test.ts …   only these files
#   scripts/test-without-host-packages.sh --run COMMAND …      any command, to look around
#
# Needs root (mounts) and dpkg (it asks dpkg which files the packages own).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || {
  echo "test-without-host-packages: needs root (it mounts overlays in a private mount namespace)" >&2
  exit 1
}
command -v dpkg-query >/dev/null || {
  echo "test-without-host-packages: needs dpkg (Debian or Ubuntu)" >&2
  exit 1
}
whiteouts=${BANGER_HOST_PACKAGES_HIDDEN:-}
if [ -z "$whiteouts" ]; then
  # The whiteouts' directory (a tmpfs inside the namespace) is made and removed out here.
  whiteouts=$(mktemp -d)
  trap 'rmdir "$whiteouts"' EXIT
  BANGER_HOST_PACKAGES_HIDDEN=$whiteouts unshare --mount --propagation private "$0" "$@"
  exit
fi

installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }
field() { dpkg-query -W -f="\${$2}" "$1"; }

# The listed packages that are installed and not essential, with their direct
# dependencies of the same kind (linux-image-amd64 is only a dependency on the
# kernel's own package), libraries left alone.
hidden=()
for pkg in $(scripts/setup.sh --list | tr '|' '\n'); do
  installed "$pkg" && [ "$(field "$pkg" Essential)" != yes ] || continue
  hidden+=("$pkg")
  for dep in $(field "$pkg" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//'); do
    case "$dep" in lib*) continue ;; esac
    installed "$dep" && [ "$(field "$dep" Essential)" != yes ] && [ "$(field "$dep" Priority)" = optional ] &&
      hidden+=("$dep")
  done
done
mapfile -t hidden < <(printf '%s\n' "${hidden[@]}" | sort -u)

# Where the tests and services look: programs (PATH), kernels and modules, Python modules,
# systemd's own programs. /bin, /sbin and /lib are /usr's on a merged-/usr system.
canonical() { sed -E 's#^/(bin|sbin|lib)/#/usr/\1/#'; }
wanted='^(/usr/bin|/usr/sbin|/usr/local/bin|/boot|/usr/lib/modules|/usr/lib/python3/dist-packages|/usr/lib/systemd)/[^/]+$'
mapfile -t paths < <(dpkg -L "${hidden[@]}" 2>/dev/null | canonical | grep -E "$wanted" | sort -u)

mount -t tmpfs tmpfs "$whiteouts"
count=0
for path in "${paths[@]}"; do
  # A directory only where a package's directory is its own (a kernel's modules, a Python module).
  if [ -d "$path" ] && [ ! -L "$path" ]; then
    case "$path" in /usr/lib/modules/* | /usr/lib/python3/dist-packages/*) ;; *) continue ;; esac
  fi
  [ -e "$path" ] || [ -L "$path" ] || continue
  mkdir -p "$whiteouts$(dirname "$path")"
  mknod "$whiteouts$path" c 0 0
  count=$((count + 1))
done
# /usr/bin last: mount itself lives there (and is hidden with its package).
for dir in $(cd "$whiteouts" && find . -mindepth 1 -type d | sed 's#^\.##' | grep -vx /usr/bin) /usr/bin; do
  # Only the deepest directories hold whiteouts (each path's parent is one of the wanted ones).
  [ -n "$(find "$whiteouts$dir" -maxdepth 1 -type c -print -quit 2>/dev/null)" ] || continue
  mount -t overlay overlay -o "lowerdir=$whiteouts$dir:$dir" "$dir"
done
echo "hidden: $count files of ${#hidden[@]} packages (${hidden[*]})"

if [ "${1:-}" = --run ]; then
  shift
  exec "$@"
fi
exec npm test -- "$@"
