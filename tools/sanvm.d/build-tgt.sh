#!/bin/sh
# Build Debian's own tgt source package with tgt-blkdiscard.patch (upstream fa97d3d: UNMAP on a
# zvol via BLKDISCARD) and install it as <Debian version>+zol1.  Runs inside the SAN image's
# chroot (a tools/sanvm build step); the build dependencies it installs are purged again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
src=/etc/apt/sources.list.d/zol-tgt-src.list
sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list > "$src"
if [ ! -s "$src" ]; then
  echo "build-tgt: no 'deb ' line in /etc/apt/sources.list to derive deb-src from" >&2
  exit 1
fi
apt-get update -q
dpkg-query -W -f '${binary:Package}\n' | sort > pkgs.before
apt-get build-dep -y -q --no-install-recommends tgt
dpkg-query -W -f '${binary:Package}\n' | sort > pkgs.after
apt-get source -q tgt
cd tgt-*/
cp "$here/tgt-blkdiscard.patch" debian/patches/zol-tgt-blkdiscard.patch
echo zol-tgt-blkdiscard.patch >> debian/patches/series
version=$(dpkg-parsechangelog -S Version)
date=$(dpkg-parsechangelog -S Date)
{
  printf 'tgt (%s+zol1) bookworm; urgency=medium\n\n' "$version"
  printf '  * UNMAP on block devices (zvols) with BLKDISCARD: upstream fa97d3d (tgt 1.0.90).\n\n'
  printf ' -- zol-openstack <zol-openstack@localhost>  %s\n\n' "$date"
  cat debian/changelog
} > ../changelog.new
mv ../changelog.new debian/changelog
# Only the tgt binary package is installed; rbd/glusterfs backends are built as Debian does.
DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -b -uc -us >../build.log 2>&1 \
  || { tail -40 ../build.log >&2; exit 1; }
cd ..
dpkg -i "tgt_${version#*:}+zol1_amd64.deb"
apt-mark hold tgt
comm -13 pkgs.before pkgs.after > pkgs.new
if [ -s pkgs.new ]; then
  xargs apt-get purge -y -q < pkgs.new
fi
rm -f "$src"
installed=$(dpkg-query -W -f '${Version}' tgt)
case "$installed" in
  *+zol1) echo "build-tgt: tgt $installed installed (UNMAP via BLKDISCARD)" ;;
  *) echo "build-tgt: tgt $installed is not the patched build" >&2; exit 1 ;;
esac
test -x /usr/sbin/tgtd
