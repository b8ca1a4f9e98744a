/**
 * A real distribution v2 registry (Debian's `docker-registry`) on
 * 127.0.0.1, on a port the kernel picks, storing into a directory of the
 * test's. The port is read from the registry's "listening on" log line.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface TokenAuthConfig {
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM file with the certificate whose key signs the tokens. */
  readonly rootCertBundle: string;
}

export interface RegistryProcess {
  /** "127.0.0.1:<port>". */
  readonly host: string;
  stop(): Promise<void>;
}

/**
 * `launcher` runs the registry through a command, e.g. `nsenter --net=/proc/PID/ns/net --`
 * to serve 127.0.0.1 of another network namespace.
 */
export async function startRegistry(
  dir: string,
  auth?: TokenAuthConfig,
  launcher: readonly string[] = [],
): Promise<RegistryProcess> {
  mkdirSync(join(dir, "storage"), { recursive: true });
  const lines = [
    "version: 0.1",
    "log:",
    "  level: info",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${join(dir, "storage")}`,
    "http:",
    "  addr: 127.0.0.1:0",
    "  secret: banger-test-secret",
  ];
  if (auth !== undefined) {
    lines.push(
      "auth:",
      "  token:",
      `    realm: ${auth.realm}`,
      `    service: ${auth.service}`,
      `    issuer: ${auth.issuer}`,
      `    rootcertbundle: ${auth.rootCertBundle}`,
    );
  }
  const configPath = join(dir, "config.yml");
  writeFileSync(configPath, `${lines.join("\n")}\n`);

  const [command = "", ...args] = [...launcher, "docker-registry", "serve", configPath];
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let log = "";
  const host = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`docker-registry did not start:\n${log}`)), 10_000);
    const onData = (chunk: Buffer): void => {
      log += chunk.toString();
      const match = /listening on (127\.0\.0\.1:[0-9]+)/.exec(log);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`docker-registry exited ${code}:\n${log}`));
    });
  });
  return {
    host,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}
