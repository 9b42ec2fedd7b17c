#!/usr/bin/env bash
# Makes the local stand-in for debian:bookworm-slim (no registry is reachable where the image is built
# and tested): a minbase bookworm from this machine's apt sources via mmdebstrap, imported into buildah
# as $1. The tarball is cached per day, so a CI machine pays for it once (about a minute).
set -euo pipefail
name=${1:?usage: images/base.sh IMAGE_NAME}
cache=${NEON_LOCAL_CI_CACHE:-/var/cache/neon-local-ci}
tarball=$cache/bookworm-minbase-$(date -u +%F).tar
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list

if [ ! -f "$tarball" ]; then
  mkdir -p "$cache"
  rm -f "$cache"/bookworm-minbase-*.tar
  # What debian:bookworm-slim leaves out: documentation, manuals, translations; merged /usr without
  # the usrmerge package (which would pull in perl).
  mmdebstrap --quiet --variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$tarball.part" "$sources" >/dev/null
  mv "$tarball.part" "$tarball"
fi

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null' EXIT
buildah add --quiet "$container" "$tarball" /
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
buildah commit --quiet --rm "$container" "$name" >/dev/null
trap - EXIT
