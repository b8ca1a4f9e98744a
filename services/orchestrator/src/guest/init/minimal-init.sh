# banger's minimal init: PID 1 of a guest whose image has no init of its own.
#
# banger's initramfs (init.sh) mounts a tmpfs on the root disk's /run, copies
# its static busybox and this script to /run/banger/, and switches to
# `/run/banger/busybox sh /run/banger/init`: nothing here needs the image to
# have a shell or any tool. The network, hostname, work disk
# (/root) and SSH host keys are already set up by then.
#
# It mounts /dev/pts and /dev/shm, starts banger's guest kit (kit-start.sh:
# the agent, and the image's sshd or dropbear, else banger's dropbear), each
# supervised by a child of its own, and then waits: while it waits, busybox sh reaps every child that ends,
# orphans re-parented to PID 1 included. It stops the guest:
#  - powering off on the ACPI power button (QEMU's QMP system_powerdown:
#    busybox acpid runs /run/banger/acpi/PWRF/00000080, which sends SIGUSR2),
#    on SIGUSR2 and on SIGTERM;
#  - rebooting on Ctrl-Alt-Del (the kernel sends SIGINT; Firecracker's
#    SendCtrlAltDel) and on SIGINT — a reboot ends the VMM;
# each time by sending SIGTERM to every process, SIGKILL after 3 s to what is
# left, unmounting /root and remounting / read-only.

BB=/run/banger/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022
say() { echo "banger-init: $*"; }

$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts || say "cannot mount /dev/pts"
$BB mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm || say "cannot mount /dev/shm"
[ -e /dev/ptmx ] || $BB ln -s pts/ptmx /dev/ptmx
# Ctrl-Alt-Del sends SIGINT to PID 1 instead of an immediate reboot.
echo 0 >/proc/sys/kernel/ctrl-alt-del

stopping=
# $1: poweroff or reboot.
stop_guest() {
  [ -z "$stopping" ] || return 0
  stopping=$1
  say "$1: stopping every process"
  $BB kill -TERM -1 2>/dev/null
  i=0
  # Every process but this one gone? (Kernel threads and zombies have no exe.)
  while [ $i -lt 30 ]; do
    left=
    for dir in /proc/[0-9]*; do
      [ "$dir" = /proc/1 ] && continue
      [ -e "$dir/exe" ] && left=1 && break
    done
    [ -z "$left" ] && break
    $BB sleep 0.1
    i=$((i + 1))
  done
  $BB kill -KILL -1 2>/dev/null
  $BB sync
  $BB umount /root 2>/dev/null
  $BB mount -o remount,ro / 2>/dev/null
  $BB sync
  $BB "$1" -f
}
trap 'stop_guest poweroff' USR2 TERM PWR
trap 'stop_guest reboot' INT

# The ACPI power button (evdev KEY_POWER; button and evdev are loaded by the initramfs).
$BB mkdir -p /run/banger/acpi/PWRF
printf '#!%s sh\n%s kill -USR2 1\n' "$BB" "$BB" >/run/banger/acpi/PWRF/00000080
$BB chmod 0755 /run/banger/acpi/PWRF/00000080
$BB acpid -c /run/banger/acpi -l /dev/null -p /run/banger/acpid.pid || say "acpid did not start: no power button"

# The agent and the SSH server (the image's sshd or dropbear, else banger's): kit-start.sh.
$BB sh /run/banger/kit/start no-init || say "banger's guest kit did not start: no agent, no SSH server"

while :; do
  # Keeps one child alive so that wait blocks; a trapped signal ends the wait.
  $BB sleep 2147483647 &
  wait
  [ -z "$stopping" ] || break
done
