#!/usr/bin/env bash
# Installs everything the services and the tests need, from a fresh clone on
# Debian or Ubuntu: the host packages of scripts/host-packages.txt (apt-get, as
# root: directly when run as root, else through sudo), then `npm ci` (as the
# user who runs this), then, when run as root, makes the checkout readable by
# uid 1000 (the tests run the VMM, the CLI and helper clients as that user).
# Elsewhere it prints the package list and exits 1. `npm run setup` runs it;
# so does .ci/run.
#
#   scripts/setup.sh                 all of it
#   scripts/setup.sh --packages      only the host packages
#   scripts/setup.sh --list          print the package list (one line each, `a|b` for alternatives)
set -euo pipefail
cd "$(dirname "$0")/.."

LIST=scripts/host-packages.txt
step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'setup: %s\n' "$*" >&2
  exit 1
}

# Each line's packages: comments and blank lines dropped; `a|b` stays one word.
packages() { sed -e 's/#.*//' "$LIST" | tr -s ' \t' '\n\n' | grep -v '^$'; }

debian_like() {
  [ -r /etc/os-release ] || return 1
  local id id_like
  id=$(. /etc/os-release && echo "${ID:-}")
  id_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
  case " $id $id_like " in *" debian "* | *" ubuntu "*) command -v apt-get >/dev/null ;; *) return 1 ;; esac
}

# Root for apt-get: ourselves, or sudo (which asks for a password if it must).
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "installing packages needs root: run this as root, or install sudo"
  fi
}

install_packages() {
  if ! debian_like; then
    {
      echo "setup: this is not Debian or Ubuntu (no apt-get, or /etc/os-release says otherwise)."
      echo "Install your distribution's equivalents of these Debian packages (see $LIST for what each is for),"
      echo "then run: npm ci"
      echo
      packages | sed 's/|/ or /g; s/^/  /'
    } >&2
    exit 1
  fi
  step "host packages ($LIST)"
  [ "$(id -u)" = 0 ] || echo "not root: installing through sudo"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  local wanted=() pkg alt
  while read -r pkg; do
    # `a|b`: the first alternative the archive knows (apt-get takes no alternatives).
    for alt in ${pkg//|/ }; do
      if [ -n "$(apt-cache policy "$alt" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)')" ]; then
        wanted+=("$alt")
        continue 2
      fi
    done
    die "none of $pkg is in this machine's apt sources (on Ubuntu, enable universe)"
  done < <(packages)
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
  echo "installed: ${wanted[*]}"
}

owner_readable() {
  [ "$(id -u)" = 0 ] || return 0
  if ! getent passwd 1000 >/dev/null; then
    echo "no uid 1000 on this machine: the tests that run as it will be skipped"
    return 0
  fi
  step "checkout readable by the tests' second user (uid 1000)"
  # Tests run the VMM, the CLI and helper clients as uid 1000 (never root) from this checkout.
  local dir
  dir=$(pwd)
  while [ "$dir" != "/" ]; do
    chmod o+x "$dir"
    dir=$(dirname "$dir")
  done
  chmod -R o+rX .
}

case "${1:-}" in
  --list)
    packages
    ;;
  --packages)
    install_packages
    ;;
  "")
    install_packages
    step "npm ci (installs and builds)"
    npm ci --no-audit --no-fund
    owner_readable
    step "done: now run npm test"
    ;;
  *)
    die "unknown argument $1 (--packages, --list, or none)"
    ;;
esac
