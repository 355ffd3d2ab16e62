#!/usr/bin/env bash
# Installs what the two README commands need and is missing: the two bare-metal Rust targets and
# QEMU >= 10 (qemu-system-x86, qemu-system-arm). Idempotent: prints and does nothing when all is
# present. On Debian bookworm QEMU 10 comes from bookworm-backports; the suite is added by reusing
# the URIs of the machine's own Debian sources entry, so no registry host is written here.
# Where it cannot install (not root, not Debian) it prints the exact commands and exits 2.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

# ---- Rust targets -----------------------------------------------------------------------------
need_targets=()
installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in x86_64-unknown-none aarch64-unknown-none; do
  grep -qx "$t" <<<"$installed_targets" || need_targets+=("$t")
done
if ((${#need_targets[@]})); then
  if ! command -v rustup >/dev/null; then
    say "rustup not found; install the targets with your toolchain manager: ${need_targets[*]}"
    exit 2
  fi
  say "installing Rust targets: ${need_targets[*]}"
  rustup target add "${need_targets[@]}" >&2
fi

# ---- QEMU >= 10 ---------------------------------------------------------------------------------
qemu_major() { # prints the major version of $1, or 0 when absent
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p' | head -n1)
  echo "${v:-0}"
}
qemu_ok() { (($(qemu_major qemu-system-x86_64) >= 10)) && (($(qemu_major qemu-system-aarch64) >= 10)); }

if qemu_ok; then
  exit 0
fi

packages=(qemu-system-x86 qemu-system-arm)
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}")

# The URIs of the machine's own Debian main-archive entry (deb822 or one-line format).
debian_uris() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # Paragraphs whose Suites name the release itself (not -security) give the archive URIs.
    awk -v rel="$codename" '
      BEGIN { RS=""; FS="\n" }
      {
        uris=""; suites=""; enabled=1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", $i); uris=$i }
          if ($i ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", $i); suites=" " $i " " }
          if ($i ~ /^Enabled:[ \t]*no/) enabled=0
        }
        if (enabled && uris != "" && index(suites, " " rel " ")) print uris
      }' "$f"
  done
  if [ -f /etc/apt/sources.list ]; then
    awk -v rel="$codename" '$1 == "deb" && $3 == rel { print $2 }' /etc/apt/sources.list
  fi
}

backports_file=/etc/apt/sources.list.d/pcie-iommu-backports.sources

print_manual() {
  say "QEMU 10.x is needed (found x86: $(qemu_major qemu-system-x86_64), arm: $(qemu_major qemu-system-aarch64))."
  say "Run as root on Debian ${codename:-bookworm}:"
  say "  add a sources entry with the URIs of your Debian entry and 'Suites: ${codename:-bookworm}-backports' to $backports_file"
  say "  apt-get update"
  say "  apt-get install -y --no-install-recommends -t ${codename:-bookworm}-backports ${packages[*]}"
}

if [ "$id" != debian ] || ! command -v apt-get >/dev/null; then
  say "not a Debian machine; install QEMU >= 10.0 (qemu-system-x86_64 and qemu-system-aarch64) yourself."
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  print_manual
  exit 2
fi

target_release=()
if [ "$codename" = bookworm ]; then
  uris=$(debian_uris | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')
  if [ -z "$uris" ]; then
    say "no Debian sources entry for '$codename' found to reuse."
    print_manual
    exit 2
  fi
  if [ ! -f "$backports_file" ]; then
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    say "adding ${codename}-backports with URIs: $uris -> $backports_file"
    {
      echo "Types: deb"
      echo "URIs: $uris"
      echo "Suites: ${codename}-backports"
      echo "Components: main"
      [ -f "$keyring" ] && echo "Signed-By: $keyring"
    } >"$backports_file"
  fi
  target_release=(-t "${codename}-backports")
fi

say "apt-get update"
apt-get update -qq >&2
say "installing ${packages[*]} ${target_release[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target_release[@]}" "${packages[@]}" >&2

if ! qemu_ok; then
  say "installed QEMU is still older than 10 (x86: $(qemu_major qemu-system-x86_64), arm: $(qemu_major qemu-system-aarch64))."
  exit 2
fi
say "QEMU: $(qemu-system-x86_64 --version | head -n1)"
