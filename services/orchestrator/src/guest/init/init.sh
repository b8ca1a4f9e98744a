#!/bin/busybox sh
# banger's initramfs /init: PID 1 from the kernel until switch_root.
#
# Built into every initramfs that `banger kernel initramfs` makes
# (services/orchestrator/src/guest/initramfs.ts), next to a static busybox
# (/bin/busybox), the modules it loads (/lib/modules/banger/*.ko, load order
# in /lib/modules/banger/order) and banger's minimal init (/banger/minimal-init).
# It runs on busybox alone: nothing here needs the image to have a shell.
#
#  1. mounts /proc, /sys and /dev (devtmpfs);
#  2. loads the modules in order: virtio-mmio, virtio block and net, ext4 and
#     what it needs, vsock, the ACPI power button and evdev; a boot argument
#     `<module>.<param>=<value>` is passed on to that module (insmod does not
#     read the command line itself);
#  3. reads the boot arguments: root= (a device, UUID=… or LABEL=…),
#     rootfstype= (ext4), rootflags=, ro/rw, init=,
#     ip=<guest>::<gateway>:<netmask>:<hostname>:<device>:off, and
#     banger.work= (the work disk, default /dev/vdb when present; "none");
#  4. configures the interface with busybox `ip` (the kernel's own ip= needs
#     CONFIG_IP_PNP and a built-in driver; Debian's kernel has neither) and
#     sets the hostname;
#  5. mounts the root disk at /newroot and the work disk on its /root;
#  6. makes the VM its own SSH host keys (its own ssh-keygen and dropbearkey,
#     run chrooted into the root disk) where the image lacks them or has keys
#     not made for this VM (banger.id=), so they persist there;
#  7. mounts a tmpfs on the root disk's /run and copies banger's guest kit
#     there (/run/banger/: this busybox, and kit/: dropbear, qemu-ga, their
#     libraries and loader; see kit-start.sh), so it runs whatever the image's
#     libc and on a read-only root; where the image has no SSH server, makes
#     the host key of banger's dropbear (/etc/banger/dropbear_ed25519_host_key,
#     with the kit's dropbearkey);
#  8. moves /dev, /proc and /sys into the root disk and switches to it, running
#     init= or the image's /sbin/init when that resolves (inside the root disk,
#     symbolic links followed) to an executable file. An image without one gets
#     banger's minimal init instead: it is copied to /run/banger/ too, and
#     that busybox runs it as PID 1 (see minimal-init.sh), which starts the
#     kit; an image with an init has the kit started just before the switch.
#
# Any failure prints "banger-init: …" on the console and reboots, which ends
# the VMM (QEMU runs with -no-reboot; Firecracker exits on a guest reboot).

set -f
export PATH=/bin
umask 022

say() { echo "banger-init: $*"; }
fail() {
  say "$*"
  say "cannot boot; rebooting (the VMM exits)"
  sync
  reboot -f
  exit 1
}

# Links for every applet, so that commands run without /proc (busybox finds
# itself through /proc/self/exe otherwise, and /proc moves to the root disk).
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc -o nosuid,nodev,noexec proc /proc || fail "cannot mount /proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "cannot mount /dev"
CMDLINE=$(cat /proc/cmdline)

# ------------------------------------------------------------------ modules

# Boot arguments for modules ("<module>.<param>=<value>"), found once: every
# fork costs milliseconds on an emulated CPU.
MODULE_ARGS=
for arg in $CMDLINE; do
  case ${arg%%=*} in
    *.*) MODULE_ARGS="$MODULE_ARGS $arg" ;;
  esac
done

# The boot arguments that belong to module $1 (- and _ are the same in module
# names), as insmod arguments.
module_params() {
  [ -n "$MODULE_ARGS" ] || return 0
  want=$(echo "$1" | tr - _)
  for arg in $MODULE_ARGS; do
    name=$(echo "${arg%%.*}" | tr - _)
    [ "$name" = "$want" ] && echo "${arg#*.}"
  done
}

if [ -f /lib/modules/banger/order ]; then
  while read -r module; do
    [ -n "$module" ] || continue
    params=
    [ -z "$MODULE_ARGS" ] || params=$(module_params "$module")
    # shellcheck disable=SC2086 # one argument per parameter
    insmod "/lib/modules/banger/$module.ko" $params ||
      say "module $module did not load (a device or CPU feature it needs may be missing)"
  done </lib/modules/banger/order
fi

# ------------------------------------------------------------------ boot arguments

root=/dev/vda
rootfstype=ext4
rootflags=
rootmode=rw
init=
ip=
work=
vm_id=
for arg in $CMDLINE; do
  case $arg in
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    rootflags=*) rootflags=${arg#rootflags=} ;;
    ro) rootmode=ro ;;
    rw) rootmode=rw ;;
    init=*) init=${arg#init=} ;;
    ip=*) ip=${arg#ip=} ;;
    banger.work=*) work=${arg#banger.work=} ;;
    banger.id=*) vm_id=${arg#banger.id=} ;;
  esac
done
case $vm_id in *[!a-z0-9-]*) fail "banger.id=$vm_id is not a VM id" ;; esac

# Waits up to 10 s for a device node ($1: a path, UUID=… or LABEL=…) and
# prints its path.
wait_device() {
  i=0
  while :; do
    case $1 in
      UUID=* | LABEL=*) dev=$(findfs "$1" 2>/dev/null) && [ -n "$dev" ] && break ;;
      *) [ -b "$1" ] && dev=$1 && break ;;
    esac
    i=$((i + 1))
    [ $i -lt 1000 ] || return 1
    sleep 0.01
  done
  echo "$dev"
}

# ------------------------------------------------------------------ network

# 255.255.255.0 -> 24
prefix_length() {
  bits=0
  old_ifs=$IFS
  IFS=.
  for octet in $1; do
    case $octet in
      255) bits=$((bits + 8)) ;;
      254) bits=$((bits + 7)) ;;
      252) bits=$((bits + 6)) ;;
      248) bits=$((bits + 5)) ;;
      240) bits=$((bits + 4)) ;;
      224) bits=$((bits + 3)) ;;
      192) bits=$((bits + 2)) ;;
      128) bits=$((bits + 1)) ;;
    esac
  done
  IFS=$old_ifs
  echo $bits
}

ip link set lo up
case $ip in
  "" | off | none) ;;
  dhcp | on | any | bootp | rarp | both) say "ip=$ip is not supported (only a static ip=); the network stays down" ;;
  *)
    old_ifs=$IFS
    IFS=:
    # shellcheck disable=SC2086 # split on ":" on purpose
    set -- $ip
    IFS=$old_ifs
    guest=$1 gateway=$3 mask=$4 host=$5 device=${6:-eth0}
    [ -n "$host" ] && hostname "$host"
    i=0
    while [ ! -e "/sys/class/net/$device" ] && [ $i -lt 1000 ]; do
      i=$((i + 1))
      sleep 0.01
    done
    if [ ! -e "/sys/class/net/$device" ]; then
      say "no network interface $device; the network stays down"
    else
      ip addr add "$guest/$(prefix_length "${mask:-255.255.255.0}")" dev "$device" &&
        ip link set "$device" up &&
        { [ -z "$gateway" ] || ip route add default via "$gateway" dev "$device"; } ||
        say "could not configure $device from ip=$ip"
      # The host's neighbour entry for this address may still name the MAC of a VM deleted a moment ago
      # (the bridge keeps it while other VMs run), and this guest asks the host nothing before the host
      # connects: its first connections would wait for the entry to go stale (20-45 s). An unsolicited
      # ARP updates the entry now.
      arping -U -c 1 -I "$device" "$guest" >/dev/null 2>&1 || say "could not announce $guest on $device"
    fi
    ;;
esac

# ------------------------------------------------------------------ disks

rootdev=$(wait_device "$root") || fail "root device $root did not appear"
options=$rootmode${rootflags:+,$rootflags}
mount -t "$rootfstype" -o "$options" "$rootdev" /newroot || fail "cannot mount $rootdev ($rootfstype, $options)"

# The work disk: banger.work= if given, else /dev/vdb when it is there.
if [ "$work" != none ]; then
  if [ -n "$work" ]; then
    workdev=$(wait_device "$work") || say "work disk $work did not appear; /root stays on the root disk"
  elif [ -b /dev/vdb ] && [ "$rootdev" != /dev/vdb ]; then
    workdev=/dev/vdb
  fi
  if [ -n "$workdev" ]; then
    if [ -L /newroot/root ] || { [ -e /newroot/root ] && [ ! -d /newroot/root ]; }; then
      say "the image's /root is not a directory; the work disk is not mounted"
    else
      mkdir -p /newroot/root
      mount -t ext4 -o rw "$workdev" /newroot/root || say "cannot mount the work disk $workdev on /root"
    fi
  fi
fi

# The path inside the root disk that $1 leads to, symbolic links followed as
# the guest will see them (absolute targets start again at the root disk's
# top); nothing when it does not exist.
resolve_in_root() {
  rest=${1#/} out= hops=0
  while [ -n "$rest" ]; do
    component=${rest%%/*}
    case $rest in
      */*) rest=${rest#*/} ;;
      *) rest= ;;
    esac
    case $component in
      "" | .) continue ;;
      ..)
        out=${out%/*}
        continue
        ;;
    esac
    if [ -L "/newroot$out/$component" ]; then
      hops=$((hops + 1))
      [ $hops -le 40 ] || return 1
      link=$(readlink "/newroot$out/$component")
      case $link in /*) out= ;; esac
      rest=${link#/}${rest:+/$rest}
    else
      out=$out/$component
    fi
  done
  [ -e "/newroot$out" ] && echo "${out:-/}"
}

# Whether $1 (a path inside the root disk) is an executable file there.
runnable_in_root() {
  target=$(resolve_in_root "$1") && [ -f "/newroot$target" ] && [ -x "/newroot$target" ]
}

# ------------------------------------------------------------------ hand over

for dir in dev proc sys; do
  mkdir -p "/newroot/$dir" 2>/dev/null
  mount --move "/$dir" "/newroot/$dir" || fail "cannot move /$dir onto the root disk"
done

# banger's guest kit on a tmpfs on the root disk's /run (an init such as
# systemd keeps a /run that is already mounted).
kit=
if [ -L /newroot/run ]; then
  say "the image's /run is a symbolic link: banger's guest kit (agent, SSH server) cannot be placed"
else
  mkdir -p /newroot/run
  if mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run && mkdir -p /newroot/run/banger &&
    cp /bin/busybox /newroot/run/banger/busybox && cp -a /banger/kit /newroot/run/banger/kit; then
    kit=1
  else
    say "cannot place banger's guest kit on a tmpfs on /run"
  fi
fi

# SSH host keys, made once per VM and kept on its root disk (ed25519 only:
# the others take seconds on an emulated CPU). Keys belong to one machine:
# /etc/banger/host-keys-of names the VM (banger.id) they were made for, and a
# root disk whose keys were not made for this VM (an image's own, baked in,
# or those of the VM an image was promoted from) has them replaced, where the
# image has the tool to make new ones (else it keeps them, and says so).
new_machine=
made_keys=
if [ -n "$vm_id" ] && [ "$(cat /newroot/etc/banger/host-keys-of 2>/dev/null)" != "$vm_id" ]; then
  new_machine=1
fi
if [ -d /newroot/etc/ssh ] && runnable_in_root /usr/bin/ssh-keygen; then
  if [ -n "$new_machine" ]; then
    for type in rsa ecdsa ed25519 dsa; do
      rm -f "/newroot/etc/ssh/ssh_host_${type}_key" "/newroot/etc/ssh/ssh_host_${type}_key.pub"
    done
  fi
  if ! [ -e /newroot/etc/ssh/ssh_host_ed25519_key ] && ! [ -e /newroot/etc/ssh/ssh_host_rsa_key ] &&
    ! [ -e /newroot/etc/ssh/ssh_host_ecdsa_key ]; then
    made_keys=1
    chroot /newroot /usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key ||
      say "ssh-keygen could not make a host key"
  fi
elif [ -n "$new_machine" ] && [ -e /newroot/etc/ssh/ssh_host_ed25519_key ]; then
  say "the image's SSH host keys stay: it has no /usr/bin/ssh-keygen to make this VM its own"
fi
if runnable_in_root /usr/bin/dropbearkey; then
  if [ -n "$new_machine" ]; then
    for type in rsa ecdsa ed25519 dss; do rm -f "/newroot/etc/dropbear/dropbear_${type}_host_key"; done
  fi
  if ! [ -e /newroot/etc/dropbear/dropbear_ed25519_host_key ] &&
    ! [ -e /newroot/etc/dropbear/dropbear_rsa_host_key ] && ! [ -e /newroot/etc/dropbear/dropbear_ecdsa_host_key ]; then
    mkdir -p /newroot/etc/dropbear
    made_keys=1
    chroot /newroot /usr/bin/dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1 ||
      say "dropbearkey could not make a host key"
  fi
fi
# banger's dropbear serves where the image has no SSH server of its own: its host key.
if [ -n "$kit" ] && ! runnable_in_root /usr/sbin/sshd && ! runnable_in_root /usr/sbin/dropbear; then
  [ -z "$new_machine" ] || rm -f /newroot/etc/banger/dropbear_ed25519_host_key
  if ! [ -e /newroot/etc/banger/dropbear_ed25519_host_key ]; then
    mkdir -p /newroot/etc/banger
    made_keys=1
    chroot /newroot /run/banger/kit/bin/dropbearkey -t ed25519 -f /etc/banger/dropbear_ed25519_host_key >/dev/null 2>&1 ||
      say "the kit's dropbearkey could not make a host key"
  fi
fi
if [ -n "$new_machine" ]; then
  mkdir -p /newroot/etc/banger && echo "$vm_id" >/newroot/etc/banger/host-keys-of ||
    say "cannot record whose SSH host keys these are"
fi
# On the disk before anyone connects: a VMM killed before the guest's writeback would lose keys the host
# has already pinned, and the next boot would make other ones (a host key mismatch).
if [ -n "$new_machine" ] || [ -n "$made_keys" ]; then sync; fi

# Seconds since the kernel started, for the console log.
uptime_s() { read -r up _ </newroot/proc/uptime && echo "$up"; }

# Starts the kit (agent, SSH server where the image has none) for an image's own init: its processes are
# children of PID 1 chrooted into the root disk, which switch_root makes / (the same mount).
start_kit() {
  [ -z "$kit" ] || setsid chroot /newroot /run/banger/busybox sh /run/banger/kit/start init
}

if [ -n "$init" ] && runnable_in_root "$init"; then
  start_kit
  say "starting $init ($(uptime_s) s after boot)"
  exec switch_root /newroot "$init"
fi
[ -z "$init" ] || say "init=$init is not an executable file on the root disk"
if [ -z "$init" ] && runnable_in_root /sbin/init; then
  start_kit
  say "starting the image's /sbin/init ($(uptime_s) s after boot)"
  exec switch_root /newroot /sbin/init
fi

# No init of its own: banger's minimal init, from the tmpfs on the root disk's /run.
[ -n "$kit" ] || fail "banger's minimal init cannot be placed on /run"
cp /banger/minimal-init /newroot/run/banger/init || fail "cannot copy banger's minimal init to /run/banger"
say "no init on the root disk: starting banger's minimal init ($(uptime_s) s after boot)"
exec switch_root /newroot /run/banger/busybox sh /run/banger/init
