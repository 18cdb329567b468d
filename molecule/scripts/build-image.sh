#!/usr/bin/env bash
# Build the test/demo container image from Debian packages (no registry is reachable): mmdebstrap a
# bookworm rootfs with systemd as PID 1 and every real peer the scenarios use, then `docker import` it.
# The tag carries a hash of this script, so the image is rebuilt only when its recipe changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/ensure-docker.sh"

# Everything a target or a peer container needs: the targets get no network access beyond their own
# docker network, so nothing can be installed later.
packages=(
  python3 python3-venv systemd systemd-sysv dbus iproute2 ca-certificates sudo   # Ansible target + systemd
  python3-apt                             # Ansible's apt module (content_filter installs its daemons)
  swaks                                   # SMTP client for the verify steps
  bind9 bind9-dnsutils                    # the fleet's DNS server (named) and dig
  postfix                                 # foreign-primary scenario and the "internet" sink MX
  python3-dkim python3-nacl               # dkimverify (rsa and ed25519): the internet host checks DKIM independently
  clamav-daemon clamdscan spamd spamc     # the incoming gateway's scanners (content_filter), and their clients
  procps less                             # for humans debugging a scenario
)
recipe_hash="$( { cat "$0"; } | sha256sum | cut -c1-12)"
image="${MAILFLEET_IMAGE:-mailfleet-debian:bookworm-$recipe_hash}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
echo "build-image: mmdebstrap bookworm for $image" >&2
# Services that must not start on their own in every container: the scenarios start postfix/named and
# the roles clamd/spamd only where a host plays that part. freshclam and sa-update would only knock on
# mirrors no container reaches. Recommends stay out (mmdebstrap's default), as on a lean server.
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook='chroot "$1" systemctl disable postfix.service named.service spamd.service \
    clamav-daemon.service clamav-daemon.socket clamav-freshclam.service spamassassin-maintenance.timer \
    >/dev/null 2>&1 || true' \
  --customize-hook='chroot "$1" systemctl mask systemd-resolved.service getty@tty1.service >/dev/null 2>&1 || true' \
  --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/machine-id && touch "$1"/etc/machine-id' \
  bookworm "$workdir/rootfs.tar" >&2
docker import -c 'CMD ["/lib/systemd/systemd"]' "$workdir/rootfs.tar" "$image" >/dev/null
echo "$image"
