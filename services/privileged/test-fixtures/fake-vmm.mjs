#!/usr/bin/env node
// A stand-in for Firecracker or QEMU on machines that have neither (and no
// usable /dev/kvm). It takes the command line the helper builds for either,
// refuses anything else as the real programs do, creates the control socket,
// writes a line to its log, and runs until SIGTERM or SIGKILL.
//
// Firecracker form: --api-sock PATH --id ID --log-path PATH [--level LEVEL]
//   One line goes to the log file, one to stdout (the guest console), and the
//   socket serves the part of Firecracker 1.8's API that banger drives, with
//   its validation, state rules, status codes and fault messages:
//     PUT /machine-config, /boot-source, /drives/{id}, /network-interfaces/{id},
//         /vsock   pre-boot only; bodies are checked like serde does (unknown
//                  field, missing field, wrong type or range, unknown variant);
//                  kernel, initrd and drive files are opened as Firecracker
//                  opens them (a drive read-write unless is_read_only); one
//                  root drive; path id must equal the body's; uds_path is
//                  bound at PUT time. Taps are not opened: only the name
//                  length and reuse within the VM are checked.
//     PUT /actions InstanceStart (needs a boot source; machine config defaults
//                  to 1 vCPU / 128 MiB), SendCtrlAltDel and FlushMetrics
//                  (post-boot only).
//     PUT /snapshot/create  Full only, of a paused guest: the snapshot file is
//                  the fake's configuration as JSON, the memory file a sparse
//                  file of the machine's size (logs `snapshot-created`).
//     PUT /snapshot/load    only into a fresh VMM (nothing configured): reads
//                  both files back (mem_backend File, or mem_file_path), opens
//                  the drives' files the state names, takes network_overrides
//                  (the tap of an interface) and vsock_override (its socket) as
//                  Firecracker 1.12 does, binds the vsock socket again, and
//                  leaves the guest paused or, with resume_vm, running (logs
//                  `snapshot-loaded`).
//     PATCH /drives/{id}  post-boot only: path_on_host, opened (logs
//                  `drive-patched`).
//     PATCH /vm    Paused | Resumed, post-boot only (GET / then says "Paused" or
//                  "Running"; logs `paused` / `resumed`). A paused guest's
//                  agent does not answer (the vsock connection is closed).
//     GET /, /version, /machine-config.
//   Success is 204 with no body (200 + JSON for GETs); a refusal is 400 with
//   {"fault_message": "..."} worded as Firecracker words it (serde messages
//   lack its " at line L column C" suffix). Other resources of the real API
//   get a 400 saying the fake does not emulate them.
//   Every accepted request is appended, as {"method","path","body"} JSON on
//   one line (body null when there was none), to fake-firecracker.requests.jsonl
//   beside the API socket, before the answer is sent.
//   InstanceStart logs `instance-start` and writes a `booting` line to stdout;
//   SendCtrlAltDel logs `ctrl-alt-del`, and ~100 ms later `guest-shutdown`,
//   and exits 0 as Firecracker does when the guest powers off.
//   The vsock socket speaks the hybrid vsock handshake (`CONNECT 1024\n` →
//   `OK <n>\n`) once the guest runs, then a fake guest agent: QGA's
//   guest-sync-delimited, guest-ping, guest-info, guest-exec (logged, with its
//   arguments), guest-exec-status (exited 0),
//   guest-fsfreeze-freeze and -thaw (logged as agent-fsfreeze-…), and
//   guest-shutdown, which logs `agent-shutdown` and exits 0 ~100 ms later.
//   Boot args `fake.agent=off` make the port refuse (a guest without the kit);
//   `fake.identity=fail` (in a snapshot's memory file too, read at its load)
//   makes banger's fork identity script "fail": exit 1, naming failed steps.
// QEMU form: -M microvm,… -qmp unix:PATH,server=on,wait=off -serial stdio …
//   Serves QMP on the socket (greeting, qmp_capabilities, query-status, quit,
//   stop and cont: query-status then says "paused" / "running"; each logged).
//   One line goes to stderr (the VMM log), one to stdout (the serial console).
//
// A guest that floods its console: boot args (Firecracker's boot-source at
// InstanceStart, QEMU's -append at start) with `fake.flood=<seconds>` make it
// write numbered lines (`fake-vmm: flood <n> …`) to stdout and, one in ten, to
// its log as fast as its reader takes them, for that long, then
// `fake-vmm: flood done <n>` to both, and run on. Output whose reader is gone
// (EPIPE) is dropped, as Firecracker and QEMU drop it.
//
// A guest whose kernel panics: `fake.panic=exit` writes the end of a kernel
// panic's console (Debian's kernel failing to mount its root file system, with
// its call trace) to stdout, then exits 0 a moment later as the VMM does when
// a guest with panic=1 reboots; `fake.panic=hang` writes it and runs on. The
// fake serves no SSH in any case.
//
// The fake.* switches can also be carried by the kernel file (the text
// `fake.panic=exit` anywhere in its first 64 KiB), so that a test can make a
// guest misbehave through banger's own create, whose boot arguments it does
// not choose: import a placeholder kernel with the switch in it.
//
// Every log line is `fake-vmm: <event> <json>` with pid, uid, gid and the argv
// it was given, so tests can check exactly how it was started.
import {
  appendFileSync,
  closeSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";
import { constants as osConstants } from "node:os";
import { dirname, join } from "node:path";

const args = process.argv.slice(2);
const identity = {
  pid: process.pid,
  uid: process.getuid?.(),
  gid: process.getgid?.(),
  groups: process.getgroups?.(),
  argv: [process.argv[1], ...args],
};

let log = (event, detail) => process.stderr.write(`fake-vmm: ${event} ${JSON.stringify(detail)}\n`);
/** The fake.* switches of the running guest (its boot arguments and kernel file, or its snapshot's memory). */
let guestSwitches = "";

function fail(message) {
  process.stderr.write(`fake-vmm: error: ${message}\n`);
  process.exit(1);
}

function parse(spec) {
  const values = new Map();
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    if (spec.flags.includes(flag)) {
      values.set(flag, true);
      continue;
    }
    if (!spec.options.includes(flag)) fail(`unexpected argument '${flag}'`);
    const value = args[i + 1];
    if (value === undefined) fail(`${flag} needs a value`);
    values.set(flag, [...(values.get(flag) ?? []), value]);
    i++;
  }
  return values;
}

function single(values, flag) {
  const all = values.get(flag);
  if (!Array.isArray(all) || all.length !== 1) fail(`${flag} must be given exactly once`);
  return all[0];
}

// The relay that reads our output may be gone: drop what cannot be written, as the real VMMs do.
for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});

/** Floods stdout (and the log, one line in ten) for `seconds`, respecting the pipe's backpressure. */
function flood(bootArgs) {
  const seconds = Number(/(?:^| )fake\.flood=(\d+)(?: |$)/.exec(bootArgs ?? "")?.[1] ?? 0);
  if (seconds === 0) return;
  const until = Date.now() + seconds * 1000;
  const padding = "x".repeat(100);
  let n = 0;
  const more = () => {
    while (Date.now() < until) {
      n++;
      if (n % 10 === 0) log("flood", { n });
      if (!process.stdout.write(`fake-vmm: flood ${n} ${padding}\n`)) return void process.stdout.once("drain", more);
    }
    process.stdout.write(`fake-vmm: flood done ${n}\n`);
    log("flood done", { n });
  };
  more();
}

/** The boot arguments with the fake.* switches the kernel file carries. */
function switches(bootArgs, kernelPath) {
  let carried = "";
  try {
    const fd = openSync(kernelPath, "r");
    const head = Buffer.alloc(64 * 1024);
    const length = readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    carried = (
      head
        .subarray(0, length)
        .toString("latin1")
        .match(/fake\.[a-z]+=[a-z0-9]+/g) ?? []
    ).join(" ");
  } catch {
    // no kernel file to read: the boot arguments alone
  }
  return `${bootArgs ?? ""} ${carried}`.trim();
}

/** The end of a kernel panic's console (the kernel could not mount its root file system). */
const PANIC_CONSOLE = [
  "[    0.000000] Linux version 6.1.0-27-amd64 (fake-vmm) #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1",
  '[    1.204211] VFS: Cannot open root device "vda" or unknown-block(0,0): error -6',
  '[    1.204650] Please append a correct "root=" boot option; here are the available partitions:',
  "[    1.205120] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
  "[    1.205500] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0-27-amd64 #1  Debian 6.1.115-1",
  "[    1.205900] Call Trace:",
  "[    1.206000]  <TASK>",
  ...Array.from(
    { length: 22 },
    (_, i) => `[    1.2061${String(i).padStart(2, "0")}]  fake_frame_${i}+0x${(i * 37 + 16).toString(16)}/0x1a0`,
  ),
  "[    1.207000]  </TASK>",
  "[    1.207100] Kernel Offset: 0x2a000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)",
  "[    1.207200] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---",
];

/** fake.panic=exit|hang: the guest's kernel panics (and, with exit, the VMM ends as on a reboot). */
function panic(args) {
  const mode = /(?:^| )fake\.panic=(exit|hang)(?: |$)/.exec(args)?.[1];
  if (mode === undefined) return;
  log("panic", { mode });
  process.stdout.write(`${PANIC_CONSOLE.join("\r\n")}\r\n`);
  if (mode === "exit") {
    setTimeout(() => {
      log("guest-reboot", {});
      process.exit(0);
    }, 300);
  }
}

process.on("SIGTERM", () => {
  log("sigterm", {});
  process.exit(0);
});

// ---------------------------------------------------------------------------
// The Firecracker API (modelled on Firecracker 1.8's swagger and sources).

const REQUESTS_FILE = "fake-firecracker.requests.jsonl";
const VMM_VERSION = "1.8.0-fake";
const MAX_VCPUS = 32;
const IFNAMSIZ = 16;
const CMDLINE_MAX_SIZE = 2048;

/** A refusal the API answers with 400 and `{"fault_message": message}`. */
class Fault extends Error {}

/** Rust's `io::Error` text for the errno of a Node fs/net error: `<strerror> (os error N)`. */
function ioError(error) {
  const text = {
    ENOENT: "No such file or directory",
    EACCES: "Permission denied",
    EPERM: "Operation not permitted",
    EISDIR: "Is a directory",
    ENOTDIR: "Not a directory",
    EROFS: "Read-only file system",
    ELOOP: "Too many levels of symbolic links",
    ENAMETOOLONG: "File name too long",
    EADDRINUSE: "Address already in use",
    EINVAL: "Invalid argument",
    EBUSY: "Device or resource busy",
  }[error.code];
  const errno = error.code === undefined ? undefined : osConstants.errno[error.code];
  return text === undefined || errno === undefined ? String(error.message) : `${text} (os error ${errno})`;
}

// A small stand-in for serde_json deserializing Firecracker's request structs:
// unknown fields are refused (`deny_unknown_fields`), required fields must be
// present, integers must fit their Rust type, enums take only their variants.
// Messages read like serde's, without its ` at line L column C` suffix.

const unsigned = (name, max) => ({ name, max });
const U8 = unsigned("u8", 255);
const U32 = unsigned("u32", 2 ** 32 - 1);
const U64 = unsigned("u64", Number.MAX_SAFE_INTEGER);
const USIZE = unsigned("usize", Number.MAX_SAFE_INTEGER);
const BOOL = { name: "bool" };
const STRING = { name: "string" };
const MAC = { name: "mac" };
const enumOf = (name, variants) => ({ name: "enum", enumName: name, variants });
const listOf = (item) => ({ name: "list", item });
/** `fields`: [name, type, "required" | "option" (null allowed) | "default" (may be absent, not null)]. */
const struct = (name, fields, denyUnknown = true) => ({ name: "struct", structName: name, fields, denyUnknown });

const TOKEN_BUCKET = struct(
  "TokenBucketConfig",
  [
    ["size", U64, "required"],
    ["one_time_burst", U64, "option"],
    ["refill_time", U64, "required"],
  ],
  false, // the one struct here without deny_unknown_fields
);
const RATE_LIMITER = struct("RateLimiterConfig", [
  ["bandwidth", TOKEN_BUCKET, "option"],
  ["ops", TOKEN_BUCKET, "option"],
]);
const MACHINE_CONFIG = struct("MachineConfig", [
  ["vcpu_count", U8, "required"],
  ["mem_size_mib", USIZE, "required"],
  ["smt", BOOL, "default"],
  ["cpu_template", enumOf("StaticCpuTemplate", ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]), "option"],
  ["track_dirty_pages", BOOL, "default"],
  ["huge_pages", enumOf("HugePageConfig", ["None", "2M"]), "default"],
]);
const BOOT_SOURCE = struct("BootSourceConfig", [
  ["kernel_image_path", STRING, "required"],
  ["initrd_path", STRING, "option"],
  ["boot_args", STRING, "option"],
]);
const DRIVE = struct("BlockDeviceConfig", [
  ["drive_id", STRING, "required"],
  ["partuuid", STRING, "option"],
  ["is_root_device", BOOL, "required"],
  ["cache_type", enumOf("CacheType", ["Unsafe", "Writeback"]), "default"],
  ["is_read_only", BOOL, "option"],
  ["path_on_host", STRING, "option"],
  ["rate_limiter", RATE_LIMITER, "option"],
  ["io_engine", enumOf("FileEngineType", ["Async", "Sync"]), "option"],
  ["socket", STRING, "option"],
]);
const NETWORK_INTERFACE = struct("NetworkInterfaceConfig", [
  ["iface_id", STRING, "required"],
  ["host_dev_name", STRING, "required"],
  ["guest_mac", MAC, "option"],
  ["rx_rate_limiter", RATE_LIMITER, "option"],
  ["tx_rate_limiter", RATE_LIMITER, "option"],
]);
const VSOCK = struct("VsockDeviceConfig", [
  ["vsock_id", STRING, "option"],
  ["guest_cid", U32, "required"],
  ["uds_path", STRING, "required"],
]);
const ACTION = struct("ActionBody", [
  ["action_type", enumOf("ActionType", ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]), "required"],
]);
const VM_STATE = struct("Vm", [["state", enumOf("VmState", ["Paused", "Resumed"]), "required"]]);
const SNAPSHOT_CREATE = struct("CreateSnapshotParams", [
  ["snapshot_type", enumOf("SnapshotType", ["Diff", "Full"]), "default"],
  ["snapshot_path", STRING, "required"],
  ["mem_file_path", STRING, "required"],
]);
const MEMORY_BACKEND = struct("MemoryBackend", [
  ["backend_type", enumOf("MemBackendType", ["File", "Uffd"]), "required"],
  ["backend_path", STRING, "required"],
]);
const NETWORK_OVERRIDE = struct("NetworkOverride", [
  ["iface_id", STRING, "required"],
  ["host_dev_name", STRING, "required"],
]);
const VSOCK_OVERRIDE = struct("VsockOverride", [["uds_path", STRING, "required"]]);
const SNAPSHOT_LOAD = struct("LoadSnapshotConfig", [
  ["snapshot_path", STRING, "required"],
  ["mem_file_path", STRING, "option"],
  ["mem_backend", MEMORY_BACKEND, "option"],
  ["enable_diff_snapshots", BOOL, "default"],
  ["resume_vm", BOOL, "default"],
  ["network_overrides", listOf(NETWORK_OVERRIDE), "option"],
  ["vsock_override", VSOCK_OVERRIDE, "option"],
]);
const DRIVE_UPDATE = struct("PartialDrive", [
  ["drive_id", STRING, "required"],
  ["path_on_host", STRING, "option"],
  ["rate_limiter", RATE_LIMITER, "option"],
]);

/** serde's list of expected names: "`a`", "`a` or `b`", "one of `a`, `b`, `c`". */
function oneOf(names) {
  const quoted = names.map((n) => `\`${n}\``);
  if (quoted.length === 1) return quoted[0];
  if (quoted.length === 2) return `${quoted[0]} or ${quoted[1]}`;
  return `one of ${quoted.join(", ")}`;
}

/** serde's description of a JSON value it did not expect. */
function unexpected(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return `boolean \`${value}\``;
  if (typeof value === "number")
    return Number.isInteger(value) ? `integer \`${value}\`` : `floating point \`${value}\``;
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  return Array.isArray(value) ? "sequence" : "map";
}

function deserialize(type, value) {
  const invalidType = (expected) => new Fault(`invalid type: ${unexpected(value)}, expected ${expected}`);
  switch (type.name) {
    case "bool":
      if (typeof value !== "boolean") throw invalidType("a boolean");
      return value;
    case "string":
      if (typeof value !== "string") throw invalidType("a string");
      return value;
    case "mac":
      if (typeof value !== "string") throw invalidType("a string");
      if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(value)) throw new Fault("The provided MAC address is invalid.");
      return value.toLowerCase();
    case "enum":
      if (typeof value !== "string") throw invalidType(`enum ${type.enumName}`);
      if (!type.variants.includes(value))
        throw new Fault(`unknown variant \`${value}\`, expected ${oneOf(type.variants)}`);
      return value;
    case "list":
      if (!Array.isArray(value)) throw invalidType("a sequence");
      return value.map((item) => deserialize(type.item, item));
    case "struct": {
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw invalidType(`struct ${type.structName}`);
      }
      const names = type.fields.map(([name]) => name);
      const result = {};
      for (const [key, fieldValue] of Object.entries(value)) {
        const field = type.fields.find(([name]) => name === key);
        if (field === undefined) {
          if (type.denyUnknown) throw new Fault(`unknown field \`${key}\`, expected ${oneOf(names)}`);
          continue;
        }
        const [, fieldType, presence] = field;
        result[key] = presence === "option" && fieldValue === null ? undefined : deserialize(fieldType, fieldValue);
      }
      for (const [name, , presence] of type.fields) {
        if (presence === "required" && !(name in result)) throw new Fault(`missing field \`${name}\``);
      }
      return result;
    }
    default: {
      // unsigned integers
      if (typeof value !== "number" || !Number.isInteger(value)) throw invalidType(type.name);
      if (value < 0 || value > type.max) throw new Fault(`invalid value: integer \`${value}\`, expected ${type.name}`);
      return value;
    }
  }
}

function parseBody(type, raw) {
  let json;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw new Fault(`An error occurred when deserializing the json body of a request: ${error.message}.`);
  }
  try {
    return deserialize(type, json);
  } catch (error) {
    if (!(error instanceof Fault)) throw error;
    throw new Fault(`An error occurred when deserializing the json body of a request: ${error.message}.`);
  }
}

/** Firecracker's check of a resource id taken from the path. */
function checkedId(id) {
  if (id === undefined || id === "") throw new Fault("The ID cannot be empty.");
  if (!/^[\p{L}\p{N}_]+$/u.test(id)) {
    throw new Fault("API Resource IDs can only contain alphanumeric characters and underscores.");
  }
  return id;
}

const POST_BOOT = "The requested operation is not supported after starting the microVM.";
const PRE_BOOT = "The requested operation is not supported before starting the microVM.";

/** Opens and closes `path` as Firecracker would, turning a failure into `describe(ioError)`. */
function probeOpen(path, flags, describe) {
  let fd;
  try {
    fd = openSync(path, flags);
  } catch (error) {
    throw new Fault(describe(ioError(error)));
  }
  closeSync(fd);
}

function listen(server, path) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/**
 * The request handler of the API socket: the pre-boot configuration calls, the
 * actions, GET / and PATCH /vm, with Firecracker's validation and messages.
 * Every accepted request is appended to `requestsPath`.
 */
function firecrackerApi(id, requestsPath) {
  const vm = {
    state: "Not started",
    machine: { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: "None" },
    bootSource: undefined,
    /** Root device first, then the others in insertion order (as Firecracker keeps them). */
    drives: [],
    nets: [],
    vsock: undefined, // { config, server }
    vsockConnections: 0,
  };
  const started = () => vm.state !== "Not started";

  const vsockBindError = (io) =>
    `Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: ${io}`;

  // Firecracker binds uds_path when the device is configured (or a snapshot is loaded). A host-initiated
  // connection writes `CONNECT <port>\n`: before InstanceStart, or to a port no guest program listens on,
  // it is closed; to the guest agent's port (1024, banger's guest kit) while the guest runs, the answer
  // is `OK <host port>\n` and the stream is a fake qemu-ga (fakeGuestAgent), unless the boot args say
  // `fake.agent=off`.
  async function bindVsock(config) {
    const server = createNetServer((connection) => {
      connection.on("error", () => {});
      let handshake = "";
      const onData = (chunk) => {
        handshake += chunk.toString("latin1");
        const newline = handshake.indexOf("\n");
        if (newline < 0) return handshake.length > 64 ? connection.destroy() : undefined;
        connection.off("data", onData);
        // A paused guest runs nothing: its agent does not answer (the connection is closed here).
        const agentUp = vm.state === "Running" && !/(^| )fake\.agent=off( |$)/.test(vm.bootSource?.boot_args ?? "");
        if (handshake.slice(0, newline) !== "CONNECT 1024" || !agentUp) return connection.destroy();
        log("vsock-connect", { port: 1024 });
        connection.write(`OK ${1073741824 + vm.vsockConnections++}\n`);
        fakeGuestAgent(connection, Buffer.from(handshake.slice(newline + 1), "latin1"));
      };
      connection.on("data", onData);
    });
    try {
      await listen(server, config.uds_path);
    } catch (error) {
      throw new Fault(vsockBindError(ioError(error)));
    }
    vm.vsock = { config, server };
  }

  const handlers = {
    "GET /": () => ({ status: 200, body: { id, state: vm.state, vmm_version: VMM_VERSION, app_name: "Firecracker" } }),
    "GET /version": () => ({ status: 200, body: { firecracker_version: VMM_VERSION } }),
    "GET /machine-config": () => ({ status: 200, body: vm.machine }),

    "PUT /machine-config": (_id, raw) => {
      const config = parseBody(MACHINE_CONFIG, raw);
      if (started()) throw new Fault(POST_BOOT);
      const next = { ...vm.machine, smt: false, track_dirty_pages: false, huge_pages: "None", ...config };
      delete next.cpu_template;
      if (config.cpu_template !== undefined && config.cpu_template !== "None") next.cpu_template = config.cpu_template;
      const badVcpus =
        next.vcpu_count === 0 ||
        next.vcpu_count > MAX_VCPUS ||
        (next.smt && next.vcpu_count > 1 && next.vcpu_count % 2 === 1);
      if (badVcpus) {
        throw new Fault(
          `Machine config error: The number of vCPUs must be greater than 0, less than ${MAX_VCPUS} and must be 1 or an even number if SMT is enabled.`,
        );
      }
      if (next.mem_size_mib === 0 || (next.huge_pages === "2M" && next.mem_size_mib % 2 !== 0)) {
        throw new Fault(
          "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.",
        );
      }
      vm.machine = next;
    },

    "PUT /boot-source": (_id, raw) => {
      const config = parseBody(BOOT_SOURCE, raw);
      if (started()) throw new Fault(POST_BOOT);
      probeOpen(config.kernel_image_path, "r", (io) => `Boot source error: The kernel file cannot be opened: ${io}`);
      if (config.initrd_path !== undefined) {
        probeOpen(
          config.initrd_path,
          "r",
          (io) =>
            `Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. ${io}`,
        );
      }
      if (config.boot_args !== undefined) {
        // linux-loader's Cmdline: printable ASCII only, and room for the terminating NUL.
        if (!/^[\x20-\x7e]*$/.test(config.boot_args)) {
          throw new Fault(
            "Boot source error: The kernel command line is invalid: String contains a non-printable ASCII character",
          );
        }
        if (config.boot_args.length + 1 > CMDLINE_MAX_SIZE) {
          throw new Fault("Boot source error: The kernel command line is invalid: Command line string too large");
        }
      }
      vm.bootSource = config;
    },

    "PUT /drives": (pathId, raw) => {
      const driveId = checkedId(pathId);
      const config = parseBody(DRIVE, raw);
      if (driveId !== config.drive_id) throw new Fault("The id from the path does not match the id from the body!");
      if (started()) throw new Fault(POST_BOOT);
      const position = vm.drives.findIndex((d) => d.drive_id === config.drive_id);
      const hasRoot = vm.drives[0]?.is_root_device === true;
      if (config.is_root_device && hasRoot && position !== 0) {
        throw new Fault("Drive config error: A root block device already exists!");
      }
      const prefix = "Drive config error: Unable to create the virtio block device:";
      if (config.path_on_host !== undefined && config.socket === undefined) {
        probeOpen(
          config.path_on_host,
          config.is_read_only === true ? "r" : "r+",
          (io) => `${prefix} Virtio backend error: Error manipulating the backing file: ${io} ${config.path_on_host}`,
        );
      } else if (config.socket !== undefined && config.path_on_host === undefined) {
        throw new Fault(`${prefix} fake-vmm does not emulate vhost-user block devices`);
      } else {
        throw new Fault(`${prefix} Invalid block config.`);
      }
      if (position < 0) {
        if (config.is_root_device) vm.drives.unshift(config);
        else vm.drives.push(config);
      } else {
        vm.drives[position] = config;
        if (position !== 0 && config.is_root_device) {
          [vm.drives[0], vm.drives[position]] = [vm.drives[position], vm.drives[0]];
        }
      }
    },

    "PUT /network-interfaces": (pathId, raw) => {
      const ifaceId = checkedId(pathId);
      const config = parseBody(NETWORK_INTERFACE, raw);
      if (ifaceId !== config.iface_id) {
        throw new Fault(`The id from the path [${ifaceId}] does not match the id from the body [${config.iface_id}]!`);
      }
      if (started()) throw new Fault(POST_BOOT);
      const others = vm.nets.filter((n) => n.iface_id !== config.iface_id);
      if (config.guest_mac !== undefined && others.some((n) => n.guest_mac === config.guest_mac)) {
        throw new Fault(`Network config error: The MAC address is already in use: ${config.guest_mac}`);
      }
      const tapPrefix = "Network config error: Could not create the network device: Open tap device failed:";
      if (Buffer.byteLength(config.host_dev_name) >= IFNAMSIZ) throw new Fault(`${tapPrefix} Invalid interface name`);
      // The fake opens no tap; a tap already attached to another interface of this VM is busy, as with TUNSETIFF.
      if (others.some((n) => n.host_dev_name === config.host_dev_name)) {
        throw new Fault(
          `${tapPrefix} Error while creating ifreq structure: Device or resource busy (os error 16). Invalid TUN/TAP Backend provided by ${config.host_dev_name}. Check our documentation on setting up the network devices.`,
        );
      }
      vm.nets = [...others, config];
    },

    "PUT /vsock": async (_id, raw) => {
      const config = parseBody(VSOCK, raw);
      if (started()) throw new Fault(POST_BOOT);
      if (vm.vsock !== undefined) {
        // Firecracker drops the old device and removes its socket before binding the new one.
        vm.vsock.server.close();
        try {
          unlinkSync(vm.vsock.config.uds_path);
        } catch (error) {
          vm.vsock = undefined;
          throw new Fault(vsockBindError(ioError(error)));
        }
        vm.vsock = undefined;
      }
      await bindVsock(config);
    },

    "PUT /actions": (_id, raw) => {
      const { action_type: action } = parseBody(ACTION, raw);
      if (action === "InstanceStart") {
        if (started()) throw new Fault(POST_BOOT);
        if (vm.bootSource === undefined) {
          throw new Fault("Start microvm error: Cannot start microvm without kernel configuration.");
        }
        vm.state = "Running";
        const boot = {
          ...vm.machine,
          kernel: vm.bootSource.kernel_image_path,
          boot_args: vm.bootSource.boot_args ?? null,
          drives: vm.drives.map((d) => d.drive_id),
          network_interfaces: vm.nets.map((n) => n.iface_id),
          vsock: vm.vsock?.config.guest_cid ?? null,
        };
        log("instance-start", boot);
        process.stdout.write(`fake-vmm: guest of ${id} booting ${JSON.stringify(boot)}\n`);
        const active = switches(boot.boot_args, boot.kernel);
        guestSwitches = active;
        setImmediate(() => {
          flood(active);
          panic(active);
        });
        return undefined;
      }
      if (!started()) throw new Fault(PRE_BOOT);
      if (action === "SendCtrlAltDel") {
        log("ctrl-alt-del", {});
        // The guest takes the hint and powers off; Firecracker then exits 0.
        setTimeout(() => {
          log("guest-shutdown", {});
          process.exit(0);
        }, 100);
      }
      return undefined;
    },

    // Full snapshots: the fake's "device state" is its configuration as JSON (marked as the fake's), its
    // "memory" a sparse file of the machine's memory size. Create needs a paused guest; load needs a
    // fresh VMM (nothing configured), takes the files back as Firecracker checks them, binds the vsock
    // socket again, and leaves the guest paused or (resume_vm) running.
    "PUT /snapshot": async (subId, raw) => {
      if (subId === "create") {
        const params = parseBody(SNAPSHOT_CREATE, raw);
        if (!started()) throw new Fault(PRE_BOOT);
        if (vm.state !== "Paused") throw new Fault("Create snapshot error: the microVM must be paused first.");
        if (params.snapshot_type === "Diff")
          throw new Fault("Create snapshot error: diff snapshots need track_dirty_pages.");
        const state = {
          fake_firecracker_snapshot: 1,
          machine: vm.machine,
          bootSource: vm.bootSource,
          drives: vm.drives,
          nets: vm.nets,
          vsock: vm.vsock?.config,
        };
        try {
          writeFileSync(params.snapshot_path, JSON.stringify(state));
          const fd = openSync(params.mem_file_path, "w", 0o600);
          ftruncateSync(fd, vm.machine.mem_size_mib * 1024 * 1024);
          closeSync(fd);
        } catch (error) {
          throw new Fault(`Create snapshot error: Cannot write the snapshot files: ${ioError(error)}`);
        }
        log("snapshot-created", { snapshot_path: params.snapshot_path, mem_file_path: params.mem_file_path });
        return undefined;
      }
      if (subId === "load") {
        const params = parseBody(SNAPSHOT_LOAD, raw);
        if ((params.mem_file_path === undefined) === (params.mem_backend === undefined)) {
          throw new Fault("Load snapshot error: exactly one of mem_file_path and mem_backend must be given.");
        }
        const configured = vm.bootSource !== undefined || vm.drives.length > 0 || vm.nets.length > 0 || vm.vsock;
        if (started() || configured) {
          throw new Fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
        }
        const memPath = params.mem_backend?.backend_path ?? params.mem_file_path;
        let state;
        try {
          state = JSON.parse(readFileSync(params.snapshot_path, "utf8"));
          if (state.fake_firecracker_snapshot !== 1) throw new Error("not a snapshot of this fake");
          if (statSync(memPath).size !== state.machine.mem_size_mib * 1024 * 1024) {
            throw new Error("the memory file's size is not the machine's memory");
          }
        } catch (error) {
          throw new Fault(
            `Load snapshot error: Cannot restore the microVM state: ${error.code ? ioError(error) : error.message}`,
          );
        }
        // As Firecracker: the tap each interface names is opened (an override names another), the drives'
        // files are opened where the state names them, and the vsock socket is bound (or the override's).
        const nets = state.nets.map((net) => {
          const override = params.network_overrides?.find((o) => o.iface_id === net.iface_id);
          return override ? { ...net, host_dev_name: override.host_dev_name } : net;
        });
        const unknown = params.network_overrides?.find((o) => !state.nets.some((n) => n.iface_id === o.iface_id));
        if (unknown) {
          throw new Fault(`Load snapshot error: Invalid network configuration: no interface ${unknown.iface_id}`);
        }
        for (const drive of state.drives) {
          probeOpen(
            drive.path_on_host,
            drive.is_read_only === true ? "r" : "r+",
            (io) =>
              `Load snapshot error: Cannot restore the block device ${drive.drive_id}: ${io} ${drive.path_on_host}`,
          );
        }
        Object.assign(vm, { machine: state.machine, bootSource: state.bootSource, drives: state.drives, nets });
        // The guest's misbehaviour is in its memory: switches in the memory file's first 64 KiB, as in a kernel's.
        guestSwitches = switches(state.bootSource?.boot_args, memPath);
        const vsock = state.vsock && params.vsock_override ? { ...state.vsock, ...params.vsock_override } : state.vsock;
        if (vsock) await bindVsock(vsock);
        vm.state = params.resume_vm ? "Running" : "Paused";
        log("snapshot-loaded", {
          snapshot_path: params.snapshot_path,
          mem: memPath,
          resumed: params.resume_vm === true,
        });
        return undefined;
      }
      throw new Fault(`Invalid request method and/or path: PUT snapshot/${subId ?? ""}.`);
    },

    // After boot (or a load) only: the drive's backing file changes (Firecracker reopens it).
    "PATCH /drives": (pathId, raw) => {
      const driveId = checkedId(pathId);
      const update = parseBody(DRIVE_UPDATE, raw);
      if (driveId !== update.drive_id) throw new Fault("The id from the path does not match the id from the body!");
      if (!started()) throw new Fault("The requested operation is not supported before starting the microVM.");
      const position = vm.drives.findIndex((d) => d.drive_id === driveId);
      if (position < 0) throw new Fault(`Drive config error: Invalid block device ID: ${driveId}`);
      if (update.path_on_host !== undefined) {
        probeOpen(
          update.path_on_host,
          "r+",
          (io) => `Drive config error: Unable to patch the block device: ${io} ${update.path_on_host}`,
        );
        vm.drives[position] = { ...vm.drives[position], path_on_host: update.path_on_host };
        log("drive-patched", { drive_id: driveId, path_on_host: update.path_on_host });
      }
    },

    "PATCH /vm": (_id, raw) => {
      const { state } = parseBody(VM_STATE, raw);
      if (!started()) throw new Fault(PRE_BOOT);
      vm.state = state === "Paused" ? "Paused" : "Running";
      log(state === "Paused" ? "paused" : "resumed", {});
    },
  };

  // Resources the real API has that this fake does not emulate.
  const notEmulated = new Set([
    "balloon",
    "cpu-config",
    "entropy",
    "logger",
    "metrics",
    "mmds",
    "snapshot",
    "vm",
    "network-interfaces",
    "machine-config",
  ]);

  return (req, res) => {
    const send = (status, body) => {
      const headers = { Server: "Firecracker API" };
      if (body === undefined) {
        res.writeHead(status, headers);
        res.end();
      } else {
        res.writeHead(status, { ...headers, "Content-Type": "application/json" });
        res.end(JSON.stringify(body));
      }
    };
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      void (async () => {
        const raw = Buffer.concat(chunks).toString("utf8");
        const hasBody = raw.length > 0;
        const path = (req.url ?? "/").split("?")[0];
        const tokens = path.replace(/^\/+/, "").split("/");
        if (tokens.length > 1 && tokens[tokens.length - 1] === "") tokens.pop();
        const [resource = "", subId] = tokens;
        const method = req.method ?? "";
        const refuse = (message) => send(400, { fault_message: message });
        try {
          if (req.headers["transfer-encoding"] !== undefined) {
            // Firecracker's HTTP server reads a body by its Content-Length only.
            return refuse("fake-vmm: Transfer-Encoding is not accepted; send the body with a Content-Length");
          }
          const handler = handlers[`${method} /${resource}`];
          if (method === "GET" && hasBody) return refuse("GET request cannot have a body.");
          if ((method === "PUT" || method === "PATCH") && !hasBody) {
            return refuse(`Empty ${method} request.`);
          }
          if (handler === undefined) {
            if (["GET", "PUT", "PATCH", "DELETE"].includes(method) && notEmulated.has(resource)) {
              return refuse(`fake-vmm does not emulate ${method} ${path}`);
            }
            return refuse(`Invalid request method and/or path: ${method} ${resource}.`);
          }
          const answer = await handler(subId, raw);
          appendFileSync(requestsPath, `${JSON.stringify({ method, path, body: hasBody ? JSON.parse(raw) : null })}\n`);
          if (answer === undefined) send(204);
          else send(answer.status, answer.body);
        } catch (error) {
          if (error instanceof Fault) refuse(error.message);
          else send(500, { fault_message: `fake-vmm: ${error.stack ?? error}` });
        }
      })();
    });
  };
}

if (args.includes("--api-sock")) {
  const values = parse({ flags: [], options: ["--api-sock", "--id", "--log-path", "--level"] });
  const socket = single(values, "--api-sock");
  const id = single(values, "--id");
  const logPath = single(values, "--log-path");
  if (!/^[a-zA-Z0-9-]{1,64}$/.test(id)) fail(`invalid instance id ${id}`);
  const level = values.has("--level") ? single(values, "--level") : "Info";
  if (!["Error", "Warning", "Info", "Debug", "Trace", "Off"].includes(level)) fail(`invalid log level ${level}`);
  // a+: a pipe (the helper passes its stderr) opened read-write never waits for a reader.
  log = (event, detail) => appendFileSync(logPath, `fake-vmm: ${event} ${JSON.stringify(detail)}\n`, { flag: "a+" });

  const server = createServer(firecrackerApi(id, join(dirname(socket), REQUESTS_FILE)));
  server.on("error", (error) => fail(`Failed to open the API socket at ${socket}: ${error.message}`));
  // The record is written before the socket appears: whoever waits for the socket then finds it.
  log("started", { kind: "firecracker", ...identity });
  process.stdout.write(`fake-vmm: console of ${id}\n`);
  server.listen(socket);
} else if (args.includes("-qmp")) {
  const values = parse({
    flags: ["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"],
    options: [
      "-M",
      "-accel",
      "-cpu",
      "-smp",
      "-m",
      "-kernel",
      "-initrd",
      "-append",
      "-drive",
      "-device",
      "-netdev",
      "-chardev",
      "-qmp",
      "-serial",
      "-name",
      "-incoming",
    ],
  });
  const qmp = /^unix:([^,]+),(server=on,wait=off|server,nowait)$/.exec(single(values, "-qmp"));
  if (!qmp) fail("-qmp must be unix:PATH,server=on,wait=off");
  if (single(values, "-serial") !== "stdio") fail("-serial must be stdio");
  if (!single(values, "-M").startsWith("microvm")) fail("-M must be microvm");
  const kernel = single(values, "-kernel");
  const socket = qmp[1];
  process.stdout.write(`fake-vmm: console of ${process.argv[1]}\n`);
  let qemuStatus = "running";

  const server = createNetServer((connection) => {
    connection.on("error", () => {});
    connection.write(
      `${JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 } }, capabilities: [] } })}\r\n`,
    );
    let buffered = "";
    connection.on("data", (chunk) => {
      buffered += chunk.toString();
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line === "") continue;
        let command;
        try {
          command = JSON.parse(line);
        } catch {
          connection.write(`${JSON.stringify({ error: { class: "GenericError", desc: "JSON parse error" } })}\r\n`);
          continue;
        }
        const answer = (body) =>
          connection.write(
            `${JSON.stringify({ ...body, ...(command.id === undefined ? {} : { id: command.id }) })}\r\n`,
          );
        if (command.execute === "qmp_capabilities") answer({ return: {} });
        else if (command.execute === "query-status")
          answer({ return: { status: qemuStatus, running: qemuStatus === "running" } });
        else if (command.execute === "stop" || command.execute === "cont") {
          qemuStatus = command.execute === "stop" ? "paused" : "running";
          log(command.execute, {});
          answer({ return: {} });
        } else if (command.execute === "quit") {
          answer({ return: {} });
          log("quit", {});
          process.exit(0);
        } else
          answer({ error: { class: "CommandNotFound", desc: `The command ${command.execute} has not been found` } });
      }
    });
  });
  server.on("error", (error) => fail(`cannot listen on ${socket}: ${error.message}`));
  // The record is written before the socket appears: whoever waits for the socket then finds it.
  log("started", { kind: "qemu-microvm", ...identity });
  server.listen(socket);
  const active = switches(single(values, "-append"), kernel);
  guestSwitches = active;
  flood(active);
  panic(active);
} else {
  fail("neither a Firecracker (--api-sock) nor a QEMU (-qmp) command line");
}

/**
 * A fake qemu-ga on a connected stream: one JSON command a line (a 0xFF byte
 * before guest-sync-delimited is skipped), one answer a line.
 */
function fakeGuestAgent(connection, first) {
  let buffered = "";
  let lastExec = [];
  const onData = (chunk) => {
    buffered += chunk.toString("latin1").replace(/\xff/g, "");
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line === "") continue;
      let command;
      try {
        command = JSON.parse(line);
      } catch {
        connection.write(`${JSON.stringify({ error: { class: "GenericError", desc: "JSON parse error" } })}\n`);
        continue;
      }
      const answer = (body) => connection.write(`${JSON.stringify(body)}\n`);
      switch (command.execute) {
        case "guest-sync-delimited":
          connection.write(Buffer.from([0xff]));
          answer({ return: command.arguments?.id });
          break;
        case "guest-ping":
          answer({ return: {} });
          break;
        case "guest-info":
          answer({ return: { version: "0.0.0-fake", supported_commands: [] } });
          break;
        case "guest-exec":
          lastExec = command.arguments?.arg ?? [];
          log("agent-exec", {
            path: command.arguments?.path,
            arg: lastExec,
            capture: command.arguments?.["capture-output"] === true,
          });
          answer({ return: { pid: 4242 } });
          break;
        case "guest-exec-status":
          // fake.identity=fail: a guest that cannot take a fork's identity (banger's script, which records the
          // fork's id in /etc/banger/host-keys-of) says which step failed and exits 1, as the script does.
          if (/(?:^| )fake\.identity=fail(?: |$)/.test(guestSwitches) && lastExec.join(" ").includes("host-keys-of")) {
            answer({
              return: {
                exited: true,
                exitcode: 1,
                "out-data": Buffer.from("host keys: kit-dropbear; SSH servers restarted: dropbear\n").toString(
                  "base64",
                ),
                "err-data": Buffer.from("failed: hostname\nfailed: $BB ip link set dev eth0\n").toString("base64"),
              },
            });
            break;
          }
          // The program "ran" and exited 0; what it printed is the fake's word for it.
          answer({
            return: { exited: true, exitcode: 0, "out-data": Buffer.from("fake-vmm: ran\n").toString("base64") },
          });
          break;
        case "guest-fsfreeze-freeze":
        case "guest-fsfreeze-thaw":
          // As qemu-ga: the number of file systems frozen or thawed.
          log(`agent-${command.execute.slice("guest-".length)}`, {});
          answer({ return: 1 });
          break;
        case "guest-shutdown":
          // As qemu-ga: no answer when the shutdown goes ahead; the guest powers off and the VMM exits.
          log("agent-shutdown", { mode: command.arguments?.mode ?? "powerdown" });
          setTimeout(() => process.exit(0), 100);
          break;
        default:
          answer({ error: { class: "CommandNotFound", desc: `The command ${command.execute} has not been found` } });
      }
    }
  };
  connection.on("data", onData);
  if (first.length > 0) onData(first);
}
