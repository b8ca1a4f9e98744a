import { readFileSync } from "node:fs";

/**
 * The uid for a user as `ip -d link` prints a tap's owner: a number, or a
 * name when /etc/passwd has one for it.
 */
export function uidOf(user: number | string | undefined, passwdPath = "/etc/passwd"): number {
  if (typeof user === "number") return user;
  if (user === undefined || user === "") return 0;
  if (/^\d+$/.test(user)) return Number(user);
  for (const line of readFileSync(passwdPath, "utf8").split("\n")) {
    const [name, , uid] = line.split(":");
    if (name === user && uid !== undefined) return Number(uid);
  }
  return -1;
}
