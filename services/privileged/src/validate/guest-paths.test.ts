import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@banger/common";
import { guestParents, validGuestPath } from "./guest-paths.js";

describe("validGuestPath", () => {
  it.each([
    "/etc/hostname",
    "/root/.ssh/authorized_keys",
    "/etc/systemd/network/10-eth0.network",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/lost+found/a",
    "/home/dev/.config/git/config",
    "/a:b,c=d@e~f",
    `/${"a".repeat(255)}`,
  ])("accepts %j", (path) => {
    expect(validGuestPath(path)).toBe(path);
  });

  it.each([
    ["empty", ""],
    ["the root", "/"],
    ["relative", "etc/hostname"],
    ["a `..` component", "/etc/../etc/shadow"],
    ["a leading `..`", "/../etc"],
    ["a `.` component", "/etc/./hostname"],
    ["a `//`", "/etc//hostname"],
    ["a trailing slash", "/etc/"],
    ["a NUL", "/etc/host\0name"],
    ["a newline", "/etc/hostname\nrm /etc/passwd"],
    ["a carriage return", "/etc/hostname\r"],
    ["a tab", "/etc/host\tname"],
    ["a DEL", "/etc/host\u007fname"],
    ["more than 4096 bytes", `/${"a/".repeat(2048)}b`],
    ["a component over 255 bytes", `/${"a".repeat(256)}`],
  ])("refuses %s as INVALID_GUEST_PATH", (_, path) => {
    expect(() => validGuestPath(path)).toThrow(InvalidArgumentError);
    expect(() => validGuestPath(path)).toThrow(expect.objectContaining({ reason: "INVALID_GUEST_PATH" }));
  });

  it.each([
    ["a space", "/etc/host name"],
    ["a double quote", '/etc/"hostname"'],
    ["a single quote", "/etc/host'name"],
    ["a backslash", "/etc/host\\name"],
    ["an inode reference", "/<12>"],
    ["a `#`", "/etc/#hostname"],
    ["a `$`", "/etc/$HOME"],
    ["a `;`", "/etc/a;rm"],
    ["a `*`", "/etc/*"],
    ["unicode", "/etc/hôstname"],
  ])("refuses %s as UNSUPPORTED_GUEST_PATH (debugfs cannot take it safely)", (_, path) => {
    expect(() => validGuestPath(path)).toThrow(expect.objectContaining({ reason: "UNSUPPORTED_GUEST_PATH" }));
  });

  it("names the field in its message", () => {
    expect(() => validGuestPath("x", "files[3].path")).toThrow(/files\[3\]\.path/);
  });
});

describe("guestParents", () => {
  it("lists the directories above a path, outermost first", () => {
    expect(guestParents("/root/.ssh/authorized_keys")).toEqual(["/root", "/root/.ssh"]);
    expect(guestParents("/hostname")).toEqual([]);
  });
});
