import { describe, expect, it } from "vitest";
import { BangerError } from "@banger/common/errors";
import {
  formatPlatform,
  indexPlatforms,
  MediaType,
  parseImageConfig,
  parseManifest,
  parsePlatform,
  selectPlatform,
  type ImageIndex,
} from "./manifest.js";

const d = (n: number): string => `sha256:${n.toString(16).padStart(64, "0")}`;
const json = (value: unknown): Uint8Array => Buffer.from(JSON.stringify(value));

function reasonOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return error instanceof BangerError ? error.reason : `untyped: ${String(error)}`;
  }
  return undefined;
}

const index: ImageIndex = {
  mediaType: MediaType.ociIndex,
  manifests: [
    { mediaType: MediaType.ociManifest, digest: d(1), size: 1, platform: { os: "linux", architecture: "amd64" } },
    {
      mediaType: MediaType.ociManifest,
      digest: d(2),
      size: 1,
      platform: { os: "linux", architecture: "arm", variant: "v6" },
    },
    {
      mediaType: MediaType.ociManifest,
      digest: d(3),
      size: 1,
      platform: { os: "linux", architecture: "arm", variant: "v7" },
    },
    {
      mediaType: MediaType.ociManifest,
      digest: d(4),
      size: 1,
      platform: { os: "linux", architecture: "arm64", variant: "v8" },
    },
    { mediaType: MediaType.ociManifest, digest: d(5), size: 1 }, // an attestation
  ],
};

describe("platforms", () => {
  it("selects by os, architecture and variant, preferring the usual variant", () => {
    expect(selectPlatform(index, { os: "linux", architecture: "amd64" })?.digest).toBe(d(1));
    expect(selectPlatform(index, { os: "linux", architecture: "arm64" })?.digest).toBe(d(4));
    expect(selectPlatform(index, { os: "linux", architecture: "arm64", variant: "v8" })?.digest).toBe(d(4));
    expect(selectPlatform(index, { os: "linux", architecture: "arm" })?.digest).toBe(d(3));
    expect(selectPlatform(index, { os: "linux", architecture: "arm", variant: "v6" })?.digest).toBe(d(2));
    expect(selectPlatform(index, { os: "linux", architecture: "riscv64" })).toBeUndefined();
    expect(selectPlatform(index, { os: "windows", architecture: "amd64" })).toBeUndefined();
  });

  it("lists what an index offers and parses platform text", () => {
    expect(indexPlatforms(index)).toEqual(["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"]);
    expect(parsePlatform("linux/arm64/v8")).toEqual({ os: "linux", architecture: "arm64", variant: "v8" });
    expect(parsePlatform("arm64")).toEqual({ os: "linux", architecture: "arm64" });
    expect(formatPlatform({ os: "linux", architecture: "amd64" })).toBe("linux/amd64");
    expect(reasonOf(() => parsePlatform("linux/amd64/v1/x"))).toBe("INVALID_PLATFORM");
    expect(reasonOf(() => parsePlatform("Linux/../x"))).toBe("INVALID_PLATFORM");
  });
});

describe("parseManifest", () => {
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaType.dockerManifest,
    config: { mediaType: MediaType.dockerConfig, digest: d(9), size: 10 },
    layers: [{ mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", digest: d(10), size: 20 }],
  };

  it("reads Docker and OCI manifests and indexes, drops unknown/unknown platforms", () => {
    expect(parseManifest(json(manifest), MediaType.dockerManifest, "m")).toEqual({
      kind: "manifest",
      manifest: { mediaType: MediaType.dockerManifest, config: manifest.config, layers: manifest.layers },
    });
    const oci = {
      schemaVersion: 2,
      manifests: [
        {
          mediaType: MediaType.ociManifest,
          digest: d(1),
          size: 3,
          platform: { os: "unknown", architecture: "unknown" },
        },
      ],
    };
    const parsed = parseManifest(json(oci), MediaType.ociIndex, "i");
    expect(parsed).toEqual({
      kind: "index",
      index: {
        mediaType: MediaType.ociIndex,
        manifests: [{ mediaType: MediaType.ociManifest, digest: d(1), size: 3 }],
      },
    });
  });

  it("rejects schema 1 by header or body with SCHEMA1_UNSUPPORTED", () => {
    expect(
      reasonOf(() => parseManifest(json({ schemaVersion: 1, name: "x", fsLayers: [] }), "application/json", "m")),
    ).toBe("SCHEMA1_UNSUPPORTED");
    expect(reasonOf(() => parseManifest(json({}), MediaType.dockerSchema1Signed, "m"))).toBe("SCHEMA1_UNSUPPORTED");
  });

  it("rejects what is not a usable image", () => {
    expect(reasonOf(() => parseManifest(Buffer.from("{"), undefined, "m"))).toBe("INVALID_MANIFEST");
    expect(
      reasonOf(() =>
        parseManifest(json({ ...manifest, layers: [{ ...manifest.layers[0], digest: "sha512:ab" }] }), undefined, "m"),
      ),
    ).toBe("UNSUPPORTED_DIGEST");
    expect(
      reasonOf(() =>
        parseManifest(json({ ...manifest, layers: [{ ...manifest.layers[0], size: -1 }] }), undefined, "m"),
      ),
    ).toBe("INVALID_MANIFEST");
    expect(
      reasonOf(() =>
        parseManifest(
          json({ ...manifest, config: { ...manifest.config, mediaType: "application/vnd.cncf.helm.config.v1+json" } }),
          undefined,
          "m",
        ),
      ),
    ).toBe("NOT_A_CONTAINER_IMAGE");
    expect(
      reasonOf(() =>
        parseManifest(
          json({
            ...manifest,
            layers: [{ ...manifest.layers[0], mediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted" }],
          }),
          undefined,
          "m",
        ),
      ),
    ).toBe("UNSUPPORTED_MEDIA_TYPE");
    expect(
      reasonOf(() =>
        parseManifest(json({ schemaVersion: 2, mediaType: "application/vnd.example+json" }), undefined, "m"),
      ),
    ).toBe("UNSUPPORTED_MEDIA_TYPE");
  });
});

describe("parseImageConfig", () => {
  it("keeps the fields banger uses and drops nulls", () => {
    const config = parseImageConfig(
      json({
        architecture: "amd64",
        os: "linux",
        rootfs: { type: "layers", diff_ids: [d(1)] },
        config: {
          Entrypoint: null,
          Cmd: ["/bin/sh"],
          Env: ["PATH=/bin"],
          User: "1000:1000",
          WorkingDir: "/srv",
          ExposedPorts: { "80/tcp": {} },
        },
        history: [],
      }),
      "c",
    );
    expect(config).toEqual({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [d(1)] },
      config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"], User: "1000:1000", WorkingDir: "/srv" },
    });
  });

  it("rejects malformed configs with INVALID_IMAGE_CONFIG", () => {
    const base = { architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [d(1)] } };
    expect(reasonOf(() => parseImageConfig(json({ ...base, rootfs: { type: "x" } }), "c"))).toBe(
      "INVALID_IMAGE_CONFIG",
    );
    expect(
      reasonOf(() => parseImageConfig(json({ ...base, rootfs: { type: "layers", diff_ids: ["md5:x"] } }), "c")),
    ).toBe("INVALID_IMAGE_CONFIG");
    expect(reasonOf(() => parseImageConfig(json({ ...base, config: { Env: "PATH=/bin" } }), "c"))).toBe(
      "INVALID_IMAGE_CONFIG",
    );
    expect(reasonOf(() => parseImageConfig(json({ rootfs: base.rootfs }), "c"))).toBe("INVALID_IMAGE_CONFIG");
  });
});
