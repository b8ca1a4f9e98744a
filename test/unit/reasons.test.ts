/**
 * Error reasons against the proto comments and the code: every reason a
 * service's proto comments promise is in that service's reasons (its own
 * list, common's or the shared), and every listed reason is thrown somewhere
 * or promised in a proto comment (no dead entries). The lists are the
 * run-time side of the `Reason` type `reason:` takes.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { NotFoundError } from "../../packages/common/src/errors.js";
import { COMMON_REASONS, SHARED_REASONS } from "../../packages/common/src/reasons.js";
import { PULLER_REASONS } from "../../services/image-puller/src/reasons.js";
import { ORCHESTRATOR_REASONS } from "../../services/orchestrator/src/reasons.js";
import { HELPER_REASONS } from "../../services/privileged/src/reasons.js";

const ROOT = resolve(import.meta.dirname, "../..");

const SERVICES = [
  { name: "orchestrator", dir: "services/orchestrator", proto: "proto/banger/v1", own: ORCHESTRATOR_REASONS },
  { name: "privileged helper", dir: "services/privileged", proto: "proto/banger/privileged/v1", own: HELPER_REASONS },
  { name: "image puller", dir: "services/image-puller", proto: "proto/banger/imagepuller/v1", own: PULLER_REASONS },
] as const;

/** UPPER_SNAKE words in proto comments that are not reasons: flags, capabilities, placeholders. */
const NOT_REASONS = /^(CAP_\w+|O_\w+|SO_\w+|SIG[A-Z]*|E[A-Z]+|UPPER_SNAKE|DOCKER_CONFIG|WORK_SEED)$/;

function files(dir: string, suffix: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: "utf8" })
    .filter((name) => name.endsWith(suffix))
    .map((name) => join(dir, name));
}

/** A proto file's comments as one text, a block per comment run. */
function comments(protoFile: string): string {
  return readFileSync(join(ROOT, protoFile), "utf8")
    .split("\n")
    .map((line) => /\/\/(.*)$/.exec(line)?.[1] ?? "\n")
    .join(" ");
}

/** Enum value names of all protos, and their suffixes after the enum's prefix (SUCCEEDED of OPERATION_STATE_SUCCEEDED). */
function enumNames(): Set<string> {
  const names = new Set<string>();
  for (const file of files("proto", ".proto")) {
    for (const [, value] of readFileSync(join(ROOT, file), "utf8").matchAll(/^\s*([A-Z][A-Z0-9_]*)\s*=\s*\d+;/gm)) {
      const parts = value!.split("_");
      for (let i = 0; i < parts.length; i++) names.add(parts.slice(i).join("_"));
    }
  }
  return names;
}

/**
 * The reasons a proto directory's comments promise: UPPER_SNAKE words with an
 * underscore (INVALID_VM_ID, NOT_BANGERS), and single words named as one
 * (`reason INTERRUPTED`, `"SSH_TIMEOUT"`), less enum values and NOT_REASONS. A
 * reason spelled like an enum value (CANCELLED, OPERATION_STATE_CANCELLED) is
 * not read; those are common's defaults.
 */
function promisedReasons(protoDir: string, enums: Set<string>): Map<string, string> {
  const promised = new Map<string, string>();
  for (const file of files(protoDir, ".proto")) {
    const text = comments(file);
    const words = [
      ...[...text.matchAll(/\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b/g)].map((m) => m[0]),
      ...[...text.matchAll(/\breason ([A-Z][A-Z0-9_]*)\b|"([A-Z][A-Z0-9_]*)"/g)].map((m) => m[1] ?? m[2]!),
    ];
    for (const word of words) {
      if (!enums.has(word) && !NOT_REASONS.test(word) && !promised.has(word)) promised.set(word, file);
    }
  }
  return promised;
}

/** The string literals in a directory's non-test TypeScript, besides its reasons module. */
function literalsIn(dir: string): Set<string> {
  const literals = new Set<string>();
  for (const file of files(`${dir}/src`, ".ts")) {
    if (/\.test\.ts$|test-support\.ts$|\/testing\/|\/reasons\.ts$/.test(file)) continue;
    for (const [, literal] of readFileSync(join(ROOT, file), "utf8").matchAll(/"([A-Z][A-Z0-9_]*)"/g)) {
      literals.add(literal!);
    }
  }
  return literals;
}

const enums = enumNames();
const promisedBy = new Map(SERVICES.map((service) => [service.name, promisedReasons(service.proto, enums)]));
const allPromised = new Set([...promisedBy.values()].flatMap((promised) => [...promised.keys()]));
const thrownBy = new Map(SERVICES.map((service) => [service.name, literalsIn(service.dir)]));
const thrownInCommon = literalsIn("packages/common");

describe("error reasons", () => {
  it("are UPPER_SNAKE, and each is declared once per service's build", () => {
    for (const service of SERVICES) {
      const all = [...COMMON_REASONS, ...SHARED_REASONS, ...service.own];
      for (const reason of all) expect(reason).toMatch(/^[A-Z][A-Z0-9_]{0,62}$/);
      expect(
        all.filter((reason, i) => all.indexOf(reason) !== i),
        service.name,
      ).toEqual([]);
    }
  });

  it("are all that `reason:` takes: any other fails tsc (tsc -p test checks this file)", () => {
    // @ts-expect-error -- a reason no build declares
    expect(new NotFoundError("x", { reason: "NO_SUCH_REASON" }).reason).toBe("NO_SUCH_REASON");
    expect(new NotFoundError("x", { reason: "VMM_RUNNING" }).reason).toBe("VMM_RUNNING");
  });

  it("are read from the proto comments in each form they are written", () => {
    expect([...promisedBy.get("orchestrator")!.keys()]).toEqual(
      expect.arrayContaining(["VM_NOT_FOUND", "NO_FREE_ADDRESS", "INTERRUPTED", "SSH_TIMEOUT", "VMM_EXITED"]),
    );
    expect([...promisedBy.get("privileged helper")!.keys()]).toEqual(
      expect.arrayContaining(["NOT_OWNER", "INVALID_VM_ID", "NOT_BANGERS", "SYMLINK_IN_PATH", "VMM_RUNNING"]),
    );
    expect([...promisedBy.get("image puller")!.keys()]).toEqual(
      expect.arrayContaining(["HOSTILE_LAYER", "PLATFORM_NOT_FOUND", "BUSYBOX_NOT_STATIC"]),
    );
    expect(allPromised.has("OPERATION_STATE_SUCCEEDED") || allPromised.has("SUCCEEDED")).toBe(false);
  });

  it.each(SERVICES)("that the $name's proto comments promise are its reasons", (service) => {
    const known = new Set<string>([...COMMON_REASONS, ...SHARED_REASONS, ...service.own]);
    const missing = [...promisedBy.get(service.name)!]
      .filter(([reason]) => !known.has(reason))
      .map(([reason, file]) => `${reason} (${relative(ROOT, join(ROOT, file))})`);
    expect(missing).toEqual([]);
  });

  it.each(SERVICES)("of the $name are each thrown by it or promised by its proto", (service) => {
    const thrown = thrownBy.get(service.name)!;
    const promised = promisedBy.get(service.name)!;
    expect(service.own.filter((reason) => !thrown.has(reason) && !promised.has(reason))).toEqual([]);
  });

  it("common's are thrown by common, and the shared ones by a service", () => {
    expect(COMMON_REASONS.filter((reason) => !thrownInCommon.has(reason))).toEqual([]);
    const thrownByAService = new Set([...thrownBy.values()].flatMap((literals) => [...literals]));
    expect(SHARED_REASONS.filter((reason) => !thrownByAService.has(reason) && !allPromised.has(reason))).toEqual([]);
  });
});
