# banger's guest kit: starts the guest agent and, where the image has no SSH
# server of its own, banger's dropbear. Every program runs supervised (started
# again after it ends) in the background; this script returns at once.
#
# banger's initramfs (init.sh) copies the kit to the tmpfs on the guest's /run
# (/run/banger/kit, next to its static busybox) and runs, inside the root disk,
# `/run/banger/busybox sh /run/banger/kit/start MODE`:
#   init     the image has an init: init.sh runs this just before switch_root
#            (the programs outlive it: they are children of PID 1, chrooted
#            into the root disk that becomes /); the image's init starts the
#            image's own sshd or dropbear;
#   no-init  banger's minimal init (minimal-init.sh) runs this: it also starts
#            the image's /usr/sbin/sshd or /usr/sbin/dropbear.
#
# SSH: the image's sshd (openssh, with its own configuration, sftp and
# updates) or else its dropbear; banger's dropbear only where it has neither,
# with the VM's own host key /etc/banger/dropbear_ed25519_host_key (made by
# init.sh with the kit's dropbearkey, kept on the root disk).
#
# The agent: qemu-ga (the kit's) on the virtio-serial port
# org.qemu.guest_agent.0 (QEMU: found by name in /sys/class/virtio-ports, as
# no udev makes /dev/virtio-ports/ here), else on vsock port 1024
# (Firecracker: the host connects through its hybrid vsock socket).

BB=/run/banger/busybox
KIT=/run/banger/kit
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mode=$1
say() { echo "banger-kit: $*"; }

# supervise NAME COMMAND...: runs COMMAND in the background, again after each end: at once, unless it also
# ended within a second of its start the time before (no busy loop on a program that cannot run: then a
# second later). A fork's identity ends dropbear to have it read its new host key: dropbear may have run
# for less than a second in the snapshot's source, and is started again at once all the same.
supervise() {
  name=$1
  shift
  (
    quick=0
    while :; do
      # Seconds since boot, read by the shell itself (under TCG every program it runs costs 20-40 ms).
      read -r up _ </proc/uptime
      started=${up%%.*}
      # In a subshell of its own: agent() ends in exec.
      ("$@")
      say "$name ended ($?); starting it again"
      read -r up _ </proc/uptime
      if [ "${up%%.*}" -le $((started + 1)) ]; then quick=$((quick + 1)); else quick=0; fi
      if [ "$quick" -ge 2 ]; then $BB sleep 1; fi
    done
  ) &
}

# The agent's transport, found when it starts: the virtio-serial port, or vsock.
agent() {
  if $BB ls /sys/bus/virtio/drivers/virtio_console/ 2>/dev/null | $BB grep -q '^virtio'; then
    # The port appears when the host side has announced it: wait for it.
    i=0
    while [ $i -lt 100 ]; do
      for dir in /sys/class/virtio-ports/*; do
        if [ "$($BB cat "$dir/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
          exec "$KIT/bin/qemu-ga" -m virtio-serial -p "/dev/${dir##*/}" -t /run/banger
        fi
      done
      i=$((i + 1))
      $BB sleep 0.1
    done
    say "no virtio-serial port org.qemu.guest_agent.0"
    return 1
  fi
  if [ -e /dev/vsock ]; then
    # 4294967295: VMADDR_CID_ANY.
    exec "$KIT/bin/qemu-ga" -m vsock-listen -p 4294967295:1024 -t /run/banger
  fi
  say "neither a virtio-serial port nor vsock: the agent cannot serve"
  $BB sleep 60
}

if [ -x "$KIT/bin/qemu-ga" ]; then
  supervise qemu-ga agent
fi

if [ "$mode" = no-init ] && [ -x /usr/sbin/sshd ]; then
  $BB mkdir -p /run/sshd
  supervise sshd /usr/sbin/sshd -D -e
elif [ "$mode" = no-init ] && [ -x /usr/sbin/dropbear ]; then
  # Name the host keys there are (dropbear logs every default one it misses, per connection); -R makes one if none.
  keys=
  for key in /etc/dropbear/dropbear_ed25519_host_key /etc/dropbear/dropbear_ecdsa_host_key /etc/dropbear/dropbear_rsa_host_key; do
    [ -f "$key" ] && keys="$keys -r $key"
  done
  # shellcheck disable=SC2086 # one word per option
  supervise dropbear /usr/sbin/dropbear -F -E ${keys:--R}
elif ! [ -x /usr/sbin/sshd ] && ! [ -x /usr/sbin/dropbear ]; then
  if [ -f /etc/banger/dropbear_ed25519_host_key ]; then
    say "the image has no SSH server: starting banger's dropbear"
    supervise dropbear "$KIT/bin/dropbear" -F -E -s -r /etc/banger/dropbear_ed25519_host_key -p 22
  else
    say "no host key for banger's dropbear (/etc/banger/dropbear_ed25519_host_key): no SSH server"
  fi
fi
