#!/usr/bin/env bash
# Build (once) the root file system the Ansible tests boot with systemd-nspawn, and
# cache it as a tarball:   tests/ansible/make-rootfs.sh SUITE ARCH OUT.tar
#
# debootstrap --variant=minbase with real systemd, sshd and Python: what an Ansible
# target needs, plus what the role would install from apt (the targets have no route
# out, so python3-venv must already be there, as on a JetPack image). The tarball is
# written atomically (OUT.tar.tmp, then renamed); a cached one is used as is.
# Foreign architectures (arm64) need qemu-user-static registered in binfmt_misc.
set -euo pipefail
SUITE="$1" ARCH="$2" OUT="$3"
MIRROR="${EA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
[ -f "$OUT" ] && { echo "cached: $OUT"; exit 0; }
PACKAGES=systemd,systemd-sysv,dbus,python3,openssh-server,iproute2,sudo,python3-apt,python3-venv,ca-certificates
case "$ARCH" in
    "$(dpkg --print-architecture)") ;;
    arm64)  # debootstrap's second stage runs the target's binaries through qemu
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || {
            echo "qemu-aarch64 is not registered in binfmt_misc: install qemu-user-static and" \
                "binfmt-support, then: mount binfmt_misc -t binfmt_misc" \
                "/proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64" >&2
            exit 1
        } ;;
esac
WORK="$(mktemp -d "${OUT%/*}/.rootfs-XXXXXX")"
cleanup() {  # debootstrap mounts proc and sys in the target: never rm -rf through them
    findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" "$SUITE" "$WORK/root" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
R="$WORK/root"
# No DHCP, no networkd: the tests give host0 its address from outside (nsenter ... ip addr).
rm -f "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Key-only root login for Ansible; the key is bound in read-only at boot.
mkdir -p "$R/root/.ssh" && chmod 700 "$R/root/.ssh"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
    >"$R/etc/ssh/sshd_config.d/ea-test.conf"
# Nothing in the containers should wait for a network that never comes online.
ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online.service"
echo "ea-ans-target" >"$R/etc/hostname"
rm -f "$R/etc/machine-id" && touch "$R/etc/machine-id"
apt_clean() { rm -rf "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"*_Packages; }
apt_clean
tar -C "$R" --numeric-owner -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "built: $OUT ($(du -h "$OUT" | cut -f1))"
