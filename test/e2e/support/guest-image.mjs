#!/usr/bin/env node
// A small guest image for real boots: busybox (static) + dropbear from the
// host, as an OCI image layout (one gzip'd tar layer, made reproducible with
// tar's --sort/--mtime/--owner), optionally pushed to a registry with skopeo.
//
//   node test/e2e/support/guest-image.mjs --out DIR [--tag TAG] [--with-init | --broken-init] [--with-host-key]
//     [--without-ssh] [--push HOST:PORT/REPO:TAG]
//
// --with-host-key bakes a dropbear host key into the image (as images with an
// SSH server installed often do): each VM must get its own instead.
// Without --with-init the image has no /sbin/init: banger's minimal init runs
// it. With --with-init, /sbin/init is busybox init with an /etc/inittab that
// starts dropbear and acpid (power button -> poweroff), like a small distro.
// With --broken-init, /sbin/init is a script that exits at once: the guest's
// kernel panics ("Attempted to kill init!") and, with panic=1, reboots.
// --without-ssh leaves dropbear (and git, and so every shared library) out: a
// static busybox alone, which banger's guest kit must make reachable.
// The root filesystem tree is left in DIR/rootfs as well.
//
// Needs: /bin/busybox (busybox-static), /usr/sbin/dropbear (dropbear-bin), tar, ldd; /usr/bin/git is added when present;
// skopeo for --push. Run as root so the tree's owners are 0:0 on disk too.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";

const { values: args } = parseArgs({
  options: {
    out: { type: "string" },
    tag: { type: "string", default: "latest" },
    "with-init": { type: "boolean", default: false },
    "with-host-key": { type: "boolean", default: false },
    "broken-init": { type: "boolean", default: false },
    "without-ssh": { type: "boolean", default: false },
    push: { type: "string" },
  },
});
if (!args.out) {
  process.stderr.write(
    "usage: guest-image.mjs --out DIR [--tag TAG] [--with-init | --broken-init] [--with-host-key] [--without-ssh] [--push HOST:PORT/REPO:TAG]\n",
  );
  process.exit(2);
}
const out = args.out;
const rootfs = join(out, "rootfs");
rmSync(out, { recursive: true, force: true });
mkdirSync(rootfs, { recursive: true });

const put = (path, content, mode = 0o644) => {
  mkdirSync(dirname(join(rootfs, path)), { recursive: true });
  writeFileSync(join(rootfs, path), content);
  chmodSync(join(rootfs, path), mode);
};
const copy = (host, path = host, mode = 0o755) => {
  mkdirSync(dirname(join(rootfs, path)), { recursive: true });
  copyFileSync(host, join(rootfs, path));
  chmodSync(join(rootfs, path), mode);
};
const link = (target, path) => {
  mkdirSync(dirname(join(rootfs, path)), { recursive: true });
  symlinkSync(target, join(rootfs, path));
};

for (const dir of ["dev", "proc", "sys", "run", "tmp", "root", "etc/dropbear", "var/log", "usr/bin", "usr/sbin"]) {
  mkdirSync(join(rootfs, dir), { recursive: true });
}
chmodSync(join(rootfs, "tmp"), 0o1777);
chmodSync(join(rootfs, "root"), 0o700);
link("../run", "var/run");

// busybox and its applets (a shell for SSH sessions; no /sbin/init unless asked).
copy("/bin/busybox", "bin/busybox");
const applets = execFileSync("/bin/busybox", ["--list-full"], { encoding: "utf8" }).split("\n").filter(Boolean);
for (const applet of applets) {
  if (applet === "bin/busybox" || (applet === "sbin/init" && !args["with-init"]) || applet === "linuxrc") continue;
  if (existsSync(join(rootfs, applet))) continue;
  const depth = applet.split("/").length - 1;
  link(`${"../".repeat(depth)}bin/busybox`, applet);
}

// dropbear (and git, when the host has it: the workspace steps use it in the guest) and the shared
// libraries they need, at the paths ldd names.
for (const binary of args["without-ssh"] ? [] : ["/usr/sbin/dropbear", "/usr/bin/dropbearkey", "/usr/bin/git"]) {
  if (binary === "/usr/bin/git" && !existsSync(binary)) continue;
  copy(binary, binary.slice(1));
  for (const line of execFileSync("ldd", [binary], { encoding: "utf8" }).split("\n")) {
    const lib = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1];
    if (lib && !existsSync(join(rootfs, lib))) copy(lib, lib.slice(1));
  }
}

put("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
put("etc/shadow", "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o600);
put("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n");
put("etc/shells", "/bin/sh\n/bin/ash\n");
if (args["with-host-key"]) {
  execFileSync("dropbearkey", ["-t", "ed25519", "-f", join(rootfs, "etc/dropbear/dropbear_ed25519_host_key")], {
    stdio: "ignore",
  });
}
put("etc/os-release", 'NAME="banger guest image"\nID=banger-guest\nPRETTY_NAME="busybox + dropbear"\n');

if (args["broken-init"]) {
  put("sbin/init", "#!/bin/sh\necho guest-image: this init exits at once\nexit 1\n", 0o755);
}
if (args["with-init"]) {
  put(
    "etc/inittab",
    [
      "::sysinit:/bin/mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts",
      "::sysinit:/bin/echo guest-image: busybox init of the image runs",
      "::sysinit:/bin/busybox acpid",
      "::respawn:/usr/sbin/dropbear -F -E",
      "::ctrlaltdel:/sbin/reboot",
      "::shutdown:/bin/umount -a -r",
      "",
    ].join("\n"),
  );
  put("etc/acpi/PWRF/00000080", "#!/bin/sh\n/sbin/poweroff\n", 0o755);
  mkdirSync(join(rootfs, "dev/pts"), { recursive: true });
}

// The OCI image layout.
const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const tar = execFileSync(
  "tar",
  ["-C", rootfs, "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf", "-", "."],
  { maxBuffer: 1 << 30 },
);
const layer = gzipSync(tar, { level: 6 });
const blobs = join(out, "layout", "blobs", "sha256");
mkdirSync(blobs, { recursive: true });
const putBlob = (bytes) => {
  writeFileSync(join(blobs, sha256(bytes).slice("sha256:".length)), bytes);
  return { digest: sha256(bytes), size: bytes.length };
};
const config = Buffer.from(
  JSON.stringify({
    architecture: "amd64",
    os: "linux",
    config: {
      Cmd: ["/bin/sh"],
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    },
    rootfs: { type: "layers", diff_ids: [sha256(tar)] },
  }),
);
const manifest = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...putBlob(config) },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", ...putBlob(layer) }],
  }),
);
const manifestRef = putBlob(manifest);
writeFileSync(join(out, "layout", "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
writeFileSync(
  join(out, "layout", "index.json"),
  JSON.stringify({
    schemaVersion: 2,
    manifests: [
      {
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        ...manifestRef,
        annotations: { "org.opencontainers.image.ref.name": args.tag },
      },
    ],
  }),
);

if (args.push) {
  execFileSync(
    "skopeo",
    ["copy", "--quiet", "--dest-tls-verify=false", `oci:${join(out, "layout")}:${args.tag}`, `docker://${args.push}`],
    { stdio: "inherit" },
  );
}
process.stdout.write(
  `${JSON.stringify({ layout: join(out, "layout"), tag: args.tag, rootfs, layerBytes: layer.length, manifest: manifestRef.digest, withInit: args["with-init"] })}\n`,
);
