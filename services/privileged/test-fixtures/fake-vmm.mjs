#!/usr/bin/env node
// A stand-in for Firecracker or QEMU on machines that have neither (and no
// usable /dev/kvm). It takes the command line the helper builds for either,
// refuses anything else as the real programs do, creates the control socket,
// writes a line to its log, and runs until SIGTERM or SIGKILL.
//
// Firecracker form: --api-sock PATH --id ID --log-path PATH [--level LEVEL]
//   Serves a minimal Firecracker API on the socket: GET / and GET /version;
//   every other request gets a 400 with a fault_message. One line goes to the
//   log file, one to stdout (the guest console).
// QEMU form: -M microvm,… -qmp unix:PATH,server=on,wait=off -serial file:PATH …
//   Serves QMP on the socket (greeting, qmp_capabilities, query-status, quit).
//   One line goes to stderr (the VMM log), one to the serial file.
//
// Every log line is `fake-vmm: <event> <json>` with pid, uid, gid and the argv
// it was given, so tests can check exactly how it was started.
import { appendFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";

const args = process.argv.slice(2);
const identity = {
  pid: process.pid,
  uid: process.getuid?.(),
  gid: process.getgid?.(),
  groups: process.getgroups?.(),
  argv: [process.argv[1], ...args],
};

let log = (event, detail) => process.stderr.write(`fake-vmm: ${event} ${JSON.stringify(detail)}\n`);

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

process.on("SIGTERM", () => {
  log("sigterm", {});
  process.exit(0);
});

if (args.includes("--api-sock")) {
  const values = parse({ flags: [], options: ["--api-sock", "--id", "--log-path", "--level"] });
  const socket = single(values, "--api-sock");
  const id = single(values, "--id");
  const logPath = single(values, "--log-path");
  if (!/^[a-zA-Z0-9-]{1,64}$/.test(id)) fail(`invalid instance id ${id}`);
  const level = values.has("--level") ? single(values, "--level") : "Info";
  if (!["Error", "Warning", "Info", "Debug", "Trace", "Off"].includes(level)) fail(`invalid log level ${level}`);
  log = (event, detail) => appendFileSync(logPath, `fake-vmm: ${event} ${JSON.stringify(detail)}\n`);

  const server = createServer((req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.method === "GET" && req.url === "/") {
      reply(200, { id, state: "Not started", vmm_version: "1.8.0-fake", app_name: "Firecracker" });
    } else if (req.method === "GET" && req.url === "/version") {
      reply(200, { firecracker_version: "1.8.0-fake" });
    } else {
      reply(400, { fault_message: `fake-vmm does not implement ${req.method} ${req.url}` });
    }
  });
  server.on("error", (error) => fail(`Failed to open the API socket at ${socket}: ${error.message}`));
  server.listen(socket, () => {
    log("started", { kind: "firecracker", ...identity });
    process.stdout.write(`fake-vmm: console of ${id}\n`);
  });
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
      "-qmp",
      "-serial",
      "-name",
    ],
  });
  const qmp = /^unix:([^,]+),(server=on,wait=off|server,nowait)$/.exec(single(values, "-qmp"));
  if (!qmp) fail("-qmp must be unix:PATH,server=on,wait=off");
  const serial = /^file:(.+)$/.exec(single(values, "-serial"));
  if (!serial) fail("-serial must be file:PATH");
  if (!single(values, "-M").startsWith("microvm")) fail("-M must be microvm");
  single(values, "-kernel");
  const socket = qmp[1];
  writeFileSync(serial[1], `fake-vmm: console of ${process.argv[1]}\n`);

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
        else if (command.execute === "query-status") answer({ return: { status: "running", running: true } });
        else if (command.execute === "quit") {
          answer({ return: {} });
          log("quit", {});
          process.exit(0);
        } else
          answer({ error: { class: "CommandNotFound", desc: `The command ${command.execute} has not been found` } });
      }
    });
  });
  server.on("error", (error) => fail(`cannot listen on ${socket}: ${error.message}`));
  server.listen(socket, () => log("started", { kind: "qemu-microvm", ...identity }));
} else {
  fail("neither a Firecracker (--api-sock) nor a QEMU (-qmp) command line");
}
