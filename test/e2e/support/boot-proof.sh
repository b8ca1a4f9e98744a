#!/usr/bin/env bash
# Boots a real guest the way banger will, without banger's services:
#
#   sudo test/e2e/support/boot-proof.sh [noinit|init|both]   (default: both)
#
# For each variant (an image without an init of its own, or with busybox init):
#  1. guest-image.mjs builds a busybox + dropbear OCI image layout; its layer
#     becomes an ext4 root disk (mkfs.ext4 -d);
#  2. an empty ext4 work disk gets /.ssh/authorized_keys (a fresh ed25519 key);
#  3. banger's code, imported from the built orchestrator (services/orchestrator/dist),
#     extracts vmlinux from the host's Debian kernel package (/boot/vmlinuz-<version>)
#     and builds the initramfs from its /lib/modules/<version>;
#  4. a network namespace gets a bridge (172.31.0.1/24) and a tap;
#  5. qemu-system-x86_64 -M microvm (TCG) boots it inside the namespace with the
#     boot arguments banger uses (ip=…, tsc_early_khz=<host kHz>);
#  6. SSH with the key: `uname -a`, `cat /root/.ssh/authorized_keys` (must be the key);
#  7. QMP system_powerdown; QEMU must exit on its own within 10 s.
# Every step prints its time. Exit 0 when every variant passed.
#
# Needs root (netns, tap), qemu-system-x86 (qemu-system-x86_64), linux-image-amd64,
# busybox-static, dropbear-bin, e2fsprogs, openssh-client, node, and `npx tsc -b` run first.
# Environment: KERNEL_VERSION (default: the newest /boot/vmlinuz-*), BOOT_KERNEL=vmlinux|bzimage
# (default vmlinux: the extracted ELF; bzimage boots /boot/vmlinuz-* itself), KEEP=1 keeps the
# work directory, SMP (default 1), MEM (default 256), MACHINE (default microvm,x-option-roms=off,
# as the privileged helper starts it), STOP=powerdown|sigint (how the guest is asked to stop: QMP
# system_powerdown, or SIGINT to PID 1 as Ctrl-Alt-Del gives it; QEMU runs with -no-reboot).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
HERE="$ROOT/test/e2e/support"
VARIANTS=${1:-both}
[ "$VARIANTS" = both ] && VARIANTS="noinit init"
KERNEL_VERSION=${KERNEL_VERSION:-$(ls /boot/vmlinuz-* | sed 's|/boot/vmlinuz-||' | sort -V | tail -1)}
BOOT_KERNEL=${BOOT_KERNEL:-vmlinux}
SMP=${SMP:-1}
MEM=${MEM:-256}
QEMU=${QEMU:-qemu-system-x86_64}
MACHINE=${MACHINE:-microvm,x-option-roms=off}
STOP=${STOP:-powerdown}
REBOOT=${REBOOT:-k}

[ "$(id -u)" = 0 ] || { echo "boot-proof: run as root (network namespace, tap)" >&2; exit 2; }
[ -f "$ROOT/services/orchestrator/dist/guest/initramfs.js" ] || { echo "boot-proof: run 'npx tsc -b' first" >&2; exit 2; }
[ -f "/boot/vmlinuz-$KERNEL_VERSION" ] && [ -d "/lib/modules/$KERNEL_VERSION" ] ||
  { echo "boot-proof: no /boot/vmlinuz-$KERNEL_VERSION with /lib/modules/$KERNEL_VERSION (apt install linux-image-amd64)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/banger-boot-proof.XXXXXX)
NS=bgr-proof-$$
QEMU_PID=
cleanup() {
  [ -z "$QEMU_PID" ] || kill -9 "$QEMU_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

T0=$(date +%s.%N)
LAST=$T0
step() { # prints the time since the previous step and since the start
  local now
  now=$(date +%s.%N)
  printf '%-58s %6.2fs  (total %6.2fs)\n' "$1" "$(echo "$now - $LAST" | bc)" "$(echo "$now - $T0" | bc)"
  LAST=$now
}

# The host's TSC frequency in kHz, as the privileged helper measures it (cpu MHz of /proc/cpuinfo).
TSC_KHZ=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)

# --- the kernel and initramfs (once for every variant)
node --input-type=module - "$ROOT" "$KERNEL_VERSION" "$WORK" <<'EOF'
const [root, version, work] = process.argv.slice(2);
const { writeFile } = await import("node:fs/promises");
const { extractVmlinux } = await import(`${root}/services/orchestrator/dist/guest/vmlinux.js`);
const { buildInitramfs } = await import(`${root}/services/orchestrator/dist/guest/initramfs.js`);
let t = Date.now();
const extracted = await extractVmlinux(`/boot/vmlinuz-${version}`);
if ("reason" in extracted) throw new Error(`no vmlinux: ${extracted.reason}`);
await writeFile(`${work}/vmlinux`, extracted.vmlinux);
console.log(`vmlinux: ${extracted.vmlinux.length} bytes from a ${extracted.compression} payload in ${Date.now() - t} ms`);
t = Date.now();
const summary = await buildInitramfs({ modulesDir: `/lib/modules/${version}`, output: `${work}/initrd` });
console.log(`initramfs: ${summary.bytes} bytes in ${Date.now() - t} ms; loads ${summary.modules.join(" ")}` +
  (summary.absent.length ? `; kernel lacks ${summary.absent.join(" ")}` : ""));
EOF
step "vmlinux extracted + initramfs built (banger's code)"
if [ "$BOOT_KERNEL" = bzimage ]; then KERNEL_FILE=/boot/vmlinuz-$KERNEL_VERSION; else KERNEL_FILE=$WORK/vmlinux; fi

# --- the network namespace: bridge + tap, as banger's helper makes them
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 172.31.0.1/24 dev br0
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0
ip -n "$NS" link set tap0 up
step "network namespace $NS: br0 172.31.0.1/24 + tap0"

ssh-keygen -q -t ed25519 -N "" -C banger-boot-proof -f "$WORK/id_ed25519"
SSH=(ip netns exec "$NS" ssh -i "$WORK/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=2 root@172.31.0.2)

failed=0
for variant in $VARIANTS; do
  echo "=== variant: $variant ($([ "$variant" = init ] && echo "busybox init of the image" || echo "no init: banger's minimal init"))"
  V=$WORK/$variant
  mkdir -p "$V"
  LAST=$(date +%s.%N)

  image_args=(--out "$V/image" --tag proof)
  [ "$variant" = init ] && image_args+=(--with-init)
  node "$HERE/guest-image.mjs" "${image_args[@]}" >"$V/image.json"
  step "OCI image layout built"

  # The root disk from the image's layer, as the image puller would make it.
  layer=$(node -e '
    const fs = require("fs"); const dir = process.argv[1];
    const index = JSON.parse(fs.readFileSync(dir + "/index.json"));
    const blob = (d) => dir + "/blobs/sha256/" + d.slice(7);
    const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0].digest)));
    console.log(blob(manifest.layers[0].digest));' "$V/image/layout")
  mkdir "$V/tree"
  tar -xzf "$layer" -C "$V/tree" --numeric-owner
  mkfs.ext4 -q -F -L root -d "$V/tree" -E root_owner=0:0 "$V/root.ext4" 128M
  # The work disk: empty but for the key, as banger writes it (/root in the guest).
  mkdir -p "$V/workfs/.ssh"
  cp "$WORK/id_ed25519.pub" "$V/workfs/.ssh/authorized_keys"
  chmod 700 "$V/workfs/.ssh"
  chmod 600 "$V/workfs/.ssh/authorized_keys"
  chown -R 0:0 "$V/workfs"
  mkfs.ext4 -q -F -L banger-work -d "$V/workfs" -E root_owner=0:0 "$V/work.ext4" 64M
  step "root disk (ext4 from the layer) + work disk (authorized_keys)"

  QEMU_ARGS=(
    "$QEMU" -M "$MACHINE" -accel tcg -cpu max -m "$MEM" -smp "$SMP"
    -nodefaults -no-user-config -nographic -no-reboot
    -serial "file:$V/console.log"
    -kernel "$KERNEL_FILE" -initrd "$WORK/initrd"
    -append "console=ttyS0 reboot=$REBOOT panic=1 root=/dev/vda rw ip=172.31.0.2::172.31.0.1:255.255.255.0:proof-$variant:eth0:off tsc_early_khz=$TSC_KHZ"
    -drive "id=root,file=$V/root.ext4,format=raw,if=none" -device virtio-blk-device,drive=root
    -drive "id=work,file=$V/work.ext4,format=raw,if=none" -device virtio-blk-device,drive=work
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:02
    -qmp "unix:$V/qmp.sock,server,nowait"
  )
  printf '%q ' "${QEMU_ARGS[@]}" >"$V/qemu-command"
  ip netns exec "$NS" "${QEMU_ARGS[@]}" &
  QEMU_PID=$!
  step "qemu started (pid $QEMU_PID)"

  # Port 22 open (probed every 0.1 s), then a full SSH login.
  ok=
  for _ in $(seq 1 600); do
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then break; fi
    if ip netns exec "$NS" timeout 0.3 bash -c 'exec 3<>/dev/tcp/172.31.0.2/22' 2>/dev/null &&
      "${SSH[@]}" true 2>/dev/null; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "FAIL: no SSH; console:"
    tail -40 "$V/console.log"
    failed=1
    kill -9 "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
    continue
  fi
  step "SSH answers (boot to login)"
  echo "  guest: $(grep -o 'Run /init.*' "$V/console.log" | head -1) at $(grep 'Run /init' "$V/console.log" | grep -o '^\[ *[0-9.]*\]' | tr -d '[] ') s;" \
    "$(grep -o 'banger-init: .*after boot)' "$V/console.log" | sed 's/banger-init: //')"

  echo "  uname -a: $("${SSH[@]}" uname -a)"
  guest_key=$("${SSH[@]}" cat /root/.ssh/authorized_keys)
  if [ "$guest_key" = "$(cat "$WORK/id_ed25519.pub")" ]; then
    echo "  /root/.ssh/authorized_keys: the key (work disk mounted on /root)"
  else
    echo "FAIL: /root/.ssh/authorized_keys is not the key: $guest_key"
    failed=1
  fi
  echo "  pid 1: $("${SSH[@]}" cat /proc/1/cmdline | tr '\0' ' ')"
  echo "  hostname: $("${SSH[@]}" hostname); /root: $("${SSH[@]}" "grep ' /root ' /proc/mounts")"
  # An orphan (re-parented to PID 1) that exits must be reaped, not left a zombie.
  zombies=$("${SSH[@]}" '(sleep 1 &); sleep 2; grep -l "^State:.*Z" /proc/[0-9]*/status 2>/dev/null | wc -l')
  echo "  zombies after an orphan exited: $zombies"
  [ "$zombies" = 0 ] || { echo "FAIL: PID 1 left zombies"; failed=1; }
  step "commands over SSH"

  if [ "$STOP" = sigint ]; then
    # What the kernel sends PID 1 on Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) once init asked for it.
    "${SSH[@]}" 'kill -INT 1' || true
    step "SIGINT sent to PID 1 (Ctrl-Alt-Del)"
  else
  node -e '
    const net = require("net");
    const s = net.connect(process.argv[1]);
    let buf = "", sent = 0;
    s.on("data", (d) => {
      buf += d;
      const lines = buf.split("\n"); buf = lines.pop();
      for (const line of lines) {
        const msg = JSON.parse(line);
        if (msg.QMP && sent === 0) { s.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\n"); sent = 1; }
        else if ("return" in msg && sent === 1) { s.write(JSON.stringify({ execute: "system_powerdown" }) + "\n"); sent = 2; }
        else if ("return" in msg && sent === 2) { s.end(); }
      }
    });
    s.on("error", (e) => { console.error(e.message); process.exit(1); });' "$V/qmp.sock"
  step "QMP system_powerdown sent"
  fi
  exited=
  for _ in $(seq 1 100); do
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then exited=1; break; fi
    sleep 0.1
  done
  if [ -n "$exited" ]; then
    wait "$QEMU_PID" && rc=0 || rc=$?
    step "qemu exited on its own (exit code $rc)"
  else
    echo "FAIL: qemu still runs 10 s after system_powerdown; console:"
    tail -20 "$V/console.log"
    failed=1
    kill -9 "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=
  grep -E "banger-init|guest-image" "$V/console.log" | sed 's/^/  console: /' || true
done

echo "qemu command line (last variant): $(cat "$V/qemu-command")"
[ "$failed" = 0 ] && echo "boot-proof: PASS" || echo "boot-proof: FAIL"
exit "$failed"
