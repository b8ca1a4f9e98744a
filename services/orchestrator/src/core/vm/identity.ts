/**
 * A fork's own identity, given right after its guest resumed from a snapshot and before anyone can
 * reach it (stage `identity`). The guest still is its source as the snapshot caught it: its hostname,
 * MAC, address, SSH host keys, clock and entropy pool. Through the guest agent (qemu-ga of banger's
 * guest kit): the file systems are thawed (a snapshot froze them), then one script, run by the kit's
 * busybox, gives the guest the fork's name, MAC and address, writes the files a create writes on the
 * root disk (hostname, hosts, network configuration) with the fork's values, sets the clock, mixes
 * fresh bytes into the entropy pool, makes new SSH host keys (as banger's initramfs does for a new
 * machine) and has the SSH servers take them. The VMM holds the guest's link down meanwhile where it
 * can (QEMU); it comes up last.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { DeadlineExceededError, FailedPreconditionError, UnavailableError } from "@banger/common";
import type { VmRecord } from "../../store/index.js";
import type { OperationContext } from "../operations.js";
import { newOpenSshKey } from "../ssh2-client.js";
import { DROPBEAR_REREADS_KEYS } from "../../guest/kit.js";
import { agentOf, waitForAgent } from "./agent.js";
import type { VmContext } from "./context.js";
import type { Handles } from "./model.js";

/** How long the guest may take to answer and to run the script (a TCG guest is slow). */
const AGENT_MS = 30_000;
const SCRIPT_MS = 60_000;
/** The first try, before the agent is known to answer (the script itself takes well under a second). */
const FIRST_TRY_MS = 15_000;
const KIT_BUSYBOX = "/run/banger/busybox";

const shellQuote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;

/** The fork's values the script sets. */
interface Identity {
  readonly vmId: string;
  readonly hostname: string;
  readonly mac: string;
  readonly ip: string;
  readonly prefixLength: number;
  readonly gateway: string;
  readonly files: readonly { readonly path: string; readonly content: Uint8Array }[];
  readonly epochSeconds: number;
  readonly entropy: Uint8Array;
  /** New ed25519 host keys, made on the host: for OpenSSH (its files' text) and for dropbear (its key file). */
  readonly keys: {
    readonly openssh: { readonly privateKey: string; readonly publicKey: string };
    readonly dropbear: Uint8Array;
    readonly kitDropbear: Uint8Array;
  };
}

/** A new ed25519 key in dropbear's key file format: string "ssh-ed25519", then string (seed ‖ public key). */
export function newDropbearKey(): Uint8Array {
  const jwk = generateKeyPairSync("ed25519").privateKey.export({ format: "jwk" });
  const field = (bytes: Buffer) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length);
    return Buffer.concat([length, bytes]);
  };
  const seed = Buffer.from(jwk.d ?? "", "base64url");
  const publicKey = Buffer.from(jwk.x ?? "", "base64url");
  return Buffer.concat([field(Buffer.from("ssh-ed25519")), field(Buffer.concat([seed, publicKey]))]);
}

/** A prefix length as a dotted netmask (24 → 255.255.255.0). */
export function netmask(prefixLength: number): string {
  const bits = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  return [24, 16, 8, 0].map((shift) => (bits >>> shift) & 0xff).join(".");
}

/** Bytes as printf's octal escapes (printf is the shell's own: no process for the bytes). */
const octal = (bytes: Uint8Array) => [...bytes].map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("");

/**
 * The script run in the guest (by the kit's busybox, as root). Each step that fails is named on
 * stderr and makes the script exit 1 after the others ran; what it did is on stdout. Under TCG each
 * process costs 20-40 ms: what the shell can do itself (files, the hostname, the entropy, IPv6, finding
 * the SSH servers in /proc) it does, and programs run only for the address and route, the clock and sync.
 * `announce`: send one unsolicited ARP for the new address (where the VMM cannot announce the guest).
 */
export function identityScript(identity: Identity, announce: boolean): string {
  const q = shellQuote;
  const files = identity.files.map((f) => `put ${q(f.path)} ${q(Buffer.from(f.content).toString("utf8"))}`);
  return [
    "BB=/run/banger/busybox",
    "KIT=/run/banger/kit",
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "failed=",
    'step() { "$@" || { echo "failed: $*" >&2; failed=1; }; }',
    // A file the create would have written, where its directory exists, rewritten in place.
    'put() { [ -d "${1%/*}" ] || return 0; printf %s "$2" >"$1" || { echo "failed: writing $1" >&2; failed=1; }; }',
    `echo ${q(identity.hostname)} >/proc/sys/kernel/hostname || { echo "failed: hostname" >&2; failed=1; }`,
    ...files,
    ...networkSteps(identity),
    // The host's neighbour entry for this address may still name the MAC of the VM that had it before, and
    // the guest asks the host nothing (its ARP cache has the gateway): tell it. Where the VMM holds the link
    // down (QEMU) this would be lost: the VMM announces the guest when it sets the link up.
    ...(announce ? [`$BB arping -U -c 1 -I eth0 ${q(identity.ip)} >/dev/null 2>&1 || true`] : []),
    `step $BB date -u -s ${q(`@${identity.epochSeconds}`)} >/dev/null`,
    `printf '${octal(identity.entropy)}' >/dev/urandom || { echo "failed: mixing entropy" >&2; failed=1; }`,
    // New SSH host keys where the initramfs makes them for a new machine (ed25519 only), made on the host
    // (a key made under TCG costs a guest 0.1-0.3 s); the old ones of every type go.
    "keys=",
    "umask 077",
    "if [ -d /etc/ssh ] && { [ -x /usr/sbin/sshd ] || [ -x /usr/bin/ssh-keygen ]; }; then",
    '  set -- /etc/ssh/ssh_host_*_key*; [ -e "$1" ] && $BB rm -f "$@"',
    // The public key is readable by all (umask 022 for it alone), the private keys by root only.
    `  umask 022; printf '%s\\n' ${q(identity.keys.openssh.publicKey)} >/etc/ssh/ssh_host_ed25519_key.pub; umask 077`,
    `  printf %s ${q(identity.keys.openssh.privateKey)} >/etc/ssh/ssh_host_ed25519_key && keys="$keys openssh" ||`,
    '    { echo "failed: the OpenSSH host key" >&2; failed=1; }',
    "fi",
    "if [ -d /etc/dropbear ] && { [ -x /usr/sbin/dropbear ] || [ -x /usr/bin/dropbearkey ]; }; then",
    '  set -- /etc/dropbear/dropbear_*_host_key; [ -e "$1" ] && $BB rm -f "$@"',
    `  printf '${octal(identity.keys.dropbear)}' >/etc/dropbear/dropbear_ed25519_host_key && keys="$keys dropbear" || { echo "failed: the dropbear host key" >&2; failed=1; }`,
    "fi",
    "if [ -f /etc/banger/dropbear_ed25519_host_key ]; then",
    `  printf '${octal(identity.keys.kitDropbear)}' >/etc/banger/dropbear_ed25519_host_key && keys="$keys kit-dropbear" || { echo "failed: the kit's dropbear host key" >&2; failed=1; }`,
    "fi",
    "umask 022",
    "[ -d /etc/banger ] || $BB mkdir -p /etc/banger",
    `echo ${q(identity.vmId)} >/etc/banger/host-keys-of || { echo "failed: recording the keys' VM" >&2; failed=1; }`,
    // On the disk soon, but not waited for, and a second later (a flush through the VMM costs a TCG guest a
    // few hundred ms: not while the SSH server starts again and the first command comes): the keys are lost
    // only if the VMM is killed before the guest writes them back.
    "{ $BB sleep 1; $BB sync; } </dev/null >/dev/null 2>&1 &",
    // The SSH servers take the new keys: systemd's units restarted; else sshd re-executes itself on
    // SIGHUP, and dropbear (which reads its keys once) is ended and started again by its supervisor.
    "restarted=",
    "rereads=",
    "systemd=",
    "if [ -d /run/systemd/system ] && [ -x /bin/systemctl -o -x /usr/bin/systemctl ]; then",
    "  systemctl try-restart ssh.service sshd.service dropbear.service 2>/dev/null && restarted=systemd",
    "  systemd=1",
    "fi",
    "for dir in /proc/[0-9]*; do",
    '  read -r comm <"$dir/comm" 2>/dev/null || continue',
    '  case "$comm" in',
    '  sshd) [ -n "$systemd" ] || { kill -HUP "${dir#/proc/}" && restarted="$restarted sshd"; } ;;',
    "  dropbear)",
    // The kit's dropbear reads its key per connection where the kit says so: it runs on (a restart costs a
    // TCG guest a few hundred ms). Else, under systemd only the kit's own (systemd restarted the image's).
    '    exe=$($BB readlink "$dir/exe")',
    `    if [ "$exe" = "$KIT/bin/dropbear" ] && [ -e "$KIT/${DROPBEAR_REREADS_KEYS}" ]; then`,
    '      rereads=" dropbear"',
    '    elif [ -z "$systemd" ] || [ "$exe" = "$KIT/bin/dropbear" ]; then',
    '      kill "${dir#/proc/}" && restarted="$restarted dropbear"',
    "    fi",
    "    ;;",
    "  esac",
    "done 2>/dev/null",
    'echo "host keys:${keys:- none (no SSH server found)}; SSH servers restarted:${restarted:- none running}${rereads:+; reading the new key per connection:$rereads}"',
    '[ -z "$failed" ]',
  ].join("\n");
}

/**
 * The script's lines that give eth0 the fork's MAC, address and default route (`step` and `$BB` defined
 * before them). One program for the MAC and the address (ifconfig replaces the address the source had;
 * the default route goes with it), one for the route. IPv6 is turned off and on again (the shell's own
 * writes): the source's addresses go, and the link-local one is made anew from the new MAC (where IPv6 is
 * on at all). Other IPv4 addresses someone added to the source's eth0 stay.
 */
export function networkSteps(identity: Pick<Identity, "mac" | "ip" | "prefixLength" | "gateway">): string[] {
  const q = shellQuote;
  return [
    `step $BB ifconfig eth0 hw ether ${q(identity.mac)} ${q(identity.ip)} netmask ${q(netmask(identity.prefixLength))}`,
    `step $BB ip route replace default via ${q(identity.gateway)} dev eth0`,
    "v6=/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    // (read's status is not looked at: some shells say end of file for a sysctl's one line.)
    "off=; [ -w $v6 ] && read -r off <$v6",
    'if [ "$off" = 0 ]; then echo 1 >$v6 && echo 0 >$v6; fi',
  ];
}

/** The fork's values, its host keys and entropy made now. */
async function identityOf(ctx: VmContext, vm: VmRecord): Promise<Identity> {
  return {
    vmId: vm.id,
    hostname: vm.name,
    mac: vm.mac,
    ip: vm.guestIp,
    prefixLength: ctx.network.prefixLength,
    gateway: ctx.network.address,
    files: ctx.guest.rootDiskFiles(vm, ctx.network).map((f) => ({ path: f.path, content: f.content })),
    epochSeconds: Math.floor(ctx.now().getTime() / 1000),
    entropy: randomBytes(64),
    keys: {
      openssh: await newOpenSshKey(`root@${vm.name}`),
      dropbear: newDropbearKey(),
      kitDropbear: newDropbearKey(),
    },
  };
}

/** Stage identity: thaw, the script, then the link up. Fails the fork when the guest cannot take it. */
export async function giveIdentity(
  ctx: VmContext,
  op: OperationContext,
  vm: VmRecord,
  handle: Handles,
  frozen: boolean,
): Promise<void> {
  await op.stage("identity", async () => {
    if (!handle.agent) {
      throw new FailedPreconditionError(
        `the fork's kernel ${vm.kernelName} has no guest agent (banger's guest kit): its identity cannot be changed`,
        { reason: "AGENT_NOT_READY" },
      );
    }
    const began = performance.now();
    const agent = agentOf(ctx, vm, handle);
    const driver = ctx.vmm.drivers[vm.vmm];
    const script = identityScript(await identityOf(ctx, vm), !driver.holdsLink);
    // One agent session: the thaw (the fork resumes with the file systems the snapshot froze, and a frozen
    // qemu-ga runs nothing else), the script and its status. A restored guest's agent runs already; one that
    // does not answer yet is waited for, then asked again.
    const run = (ms: number) =>
      agent.run(KIT_BUSYBOX, ["sh", "-c", script], ms, { thawFirst: frozen, firstPollMs: 150 });
    const ran = await run(FIRST_TRY_MS).catch(async (error: unknown) => {
      if (!(error instanceof UnavailableError || error instanceof DeadlineExceededError)) throw error;
      await waitForAgent(ctx, vm, handle, AGENT_MS, op.signal);
      return run(SCRIPT_MS);
    });
    const timing = `the agent ran it in ${Math.round(performance.now() - began)} ms`;
    if (ran.exitCode !== 0) {
      throw new FailedPreconditionError(
        `the guest did not take the fork's identity (exit ${ran.exitCode}): ${ran.stderr.trim().slice(0, 2000)}`,
        { reason: "FORK_IDENTITY_FAILED" },
      );
    }
    const linked = await driver.setLink(handle.controlSocket, true);
    await op.note(
      "identity",
      `${vm.name} at ${vm.guestIp} (${vm.mac}); ${ran.stdout.trim()}${linked ? "; link up" : ""} (${timing})`,
    );
  });
}
