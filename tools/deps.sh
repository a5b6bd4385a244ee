# shellcheck shell=bash
# Dependency check shared by tools/quickstart.sh and tools/test.sh (sourced, not run).
#
#   mtrec_require_packages <debian-package>...
#
# Each name is a Debian 12 package. A package counts as present when dpkg says
# it is installed, or, for the compiler and tools, when its command is on PATH.
# Missing packages are installed with apt-get when running as root; otherwise
# the function prints the exact command to run and returns 1.
# MTREC_SKIP_DEPS=1 skips the check (non-Debian systems with the libraries
# installed some other way).

# The command that proves a package is present without dpkg (empty: dpkg only).
mtrec_package_command() {
  case "$1" in
    g++) echo g++ ;;
    cmake) echo cmake ;;
    make) echo make ;;
    python3) echo python3 ;;
    *) echo "" ;;
  esac
}

mtrec_package_present() {
  local pkg="$1" cmd
  cmd="$(mtrec_package_command "$pkg")"
  if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then
    return 0
  fi
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'
    return $?
  fi
  return 1
}

mtrec_require_packages() {
  local missing=() pkg
  if [ "${MTREC_SKIP_DEPS:-0}" = "1" ]; then
    echo "dependencies: not checked (MTREC_SKIP_DEPS=1)"
    return 0
  fi
  for pkg in "$@"; do
    mtrec_package_present "$pkg" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "dependencies: all present ($*)"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing dependencies: ${missing[*]}" >&2
    echo "This script installs them with apt-get on Debian 12; on other systems install the" >&2
    echo "equivalents of these Debian packages yourself: ${missing[*]}" >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing dependencies: ${missing[*]}" >&2
    echo "Install them, then run this script again:" >&2
    echo "" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    echo "" >&2
    return 1
  fi
  echo "dependencies: installing ${missing[*]} (running as root)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${missing[@]}"
  for pkg in "${missing[@]}"; do
    if ! mtrec_package_present "$pkg"; then
      echo "error: apt-get did not install $pkg" >&2
      return 1
    fi
  done
}
