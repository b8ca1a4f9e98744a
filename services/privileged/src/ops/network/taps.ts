/** VM taps and warm-pool taps: the owner's, marked, on banger's bridge. */
import { randomBytes } from "node:crypto";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  PermissionDeniedError,
} from "@banger/common/errors";
import { uidOf } from "../../host/passwd.js";
import { ALIAS_PREFIX, DEVICE_PREFIX, tapName, validBridgeName, validVmId } from "../../validate/ids.js";
import { parseIpv4 } from "../../validate/ipv4.js";
import type { NetworkDeps } from "./types.js";
import {
  bangerBridge,
  bangerBridgeIn,
  findLink,
  ip,
  ipBatch,
  makeTap,
  rawLinks,
  requireGuestAddress,
} from "./links.js";

const POOL_NAME = /^bgr-p[0-9a-f]{10}$/;

export async function createTap(
  deps: NetworkDeps,
  req: { vmId: string; bridge: string; pool: boolean; fromPool: string; guestAddress?: string },
): Promise<{ name: string }> {
  const bridgeName = validBridgeName(req.bridge);
  const guestAddress = req.guestAddress ?? "";
  if (req.pool) {
    if (req.vmId !== "" || req.fromPool !== "" || guestAddress !== "") {
      throw new InvalidArgumentError("a pool tap takes no vm_id, from_pool or guest_address", {
        reason: "INVALID_ARGUMENT",
      });
    }
    await bangerBridge(deps, bridgeName);
    const name = `${DEVICE_PREFIX}p${randomBytes(5).toString("hex")}`;
    await makeTap(deps, name, `${ALIAS_PREFIX}pool`, bridgeName);
    return { name };
  }
  const vmId = validVmId(req.vmId);
  const name = tapName(vmId);
  const alias = `${ALIAS_PREFIX}tap:${vmId}`;
  if (req.fromPool !== "" && !POOL_NAME.test(req.fromPool)) {
    throw new InvalidArgumentError(`from_pool must match ${POOL_NAME.source}`, { reason: "INVALID_POOL_NAME" });
  }
  const guest = guestAddress === "" ? undefined : parseIpv4(guestAddress, "guest_address");
  const links = await rawLinks(deps);
  const { cidr } = bangerBridgeIn(links, bridgeName);
  if (guest) requireGuestAddress(cidr, guest, bridgeName);
  // The bridge's neighbour entry for the address may name the MAC of the VM that had it before: the host would
  // send the VM's first packets there until the entry times out. `flush` forgets it, and is content with none.
  const forgetNeighbour = async () => {
    if (guest) await ip(deps, "neigh", "flush", "to", guest.text, "dev", bridgeName);
  };
  const existing = links.find((l) => l.ifname === name);
  if (existing) {
    if (existing.ifalias === alias) {
      await forgetNeighbour();
      return { name }; // already there: idempotent
    }
    if (existing.ifalias?.startsWith(ALIAS_PREFIX)) {
      throw new AlreadyExistsError(`tap ${name} belongs to another VM`, { reason: "TAP_EXISTS" });
    }
    throw new PermissionDeniedError(`link ${name} exists but banger did not make it`, { reason: "NOT_BANGERS" });
  }
  if (req.fromPool === "") {
    await makeTap(deps, name, alias, bridgeName);
    await forgetNeighbour();
    return { name };
  }
  const pooled = links.find((l) => l.ifname === req.fromPool);
  if (pooled?.ifalias !== `${ALIAS_PREFIX}pool`) {
    throw new FailedPreconditionError(`${req.fromPool} is not a warm-pool tap`, { reason: "NOT_IN_POOL" });
  }
  // Made for another owner (an earlier helper's): this owner's VMM could not open it.
  const madeFor = uidOf(pooled.linkinfo?.info_data?.user);
  if (madeFor !== deps.config.ownerUid) {
    throw new FailedPreconditionError(
      `${req.fromPool} was made for uid ${madeFor}, not for the owner (uid ${deps.config.ownerUid})`,
      { reason: "NOT_IN_POOL" },
    );
  }
  const from = req.fromPool;
  try {
    await ipBatch(deps, [
      ["link", "set", "dev", from, "down"],
      ["link", "set", "dev", from, "name", name],
      ["link", "set", "dev", name, "alias", alias],
      ["link", "set", "dev", name, "up"],
    ]);
  } catch (error) {
    // Put the pool tap back as it was, whichever step failed.
    const now = await rawLinks(deps);
    const undo: string[][] = [];
    if (now.some((l) => l.ifname === name)) {
      undo.push(["link", "set", "dev", name, "down"], ["link", "set", "dev", name, "name", from]);
    }
    undo.push(["link", "set", "dev", from, "alias", `${ALIAS_PREFIX}pool`], ["link", "set", "dev", from, "up"]);
    await ipBatch(deps, undo).catch((undoError: unknown) => {
      if (error instanceof Error) error.message += ` (and restoring ${from} failed: ${String(undoError)})`;
    });
    throw error;
  }
  await forgetNeighbour();
  return { name };
}

export async function deleteTap(
  deps: NetworkDeps,
  req: { vmId: string; poolName: string },
): Promise<{ existed: boolean }> {
  let name: string;
  let alias: string;
  if (req.poolName !== "") {
    if (req.vmId !== "" || !POOL_NAME.test(req.poolName)) {
      throw new InvalidArgumentError(`pool_name must match ${POOL_NAME.source}, without vm_id`, {
        reason: "INVALID_POOL_NAME",
      });
    }
    name = req.poolName;
    alias = `${ALIAS_PREFIX}pool`;
  } else {
    const vmId = validVmId(req.vmId);
    name = tapName(vmId);
    alias = `${ALIAS_PREFIX}tap:${vmId}`;
  }
  const link = await findLink(deps, name);
  if (!link) return { existed: false };
  if (link.ifalias !== alias) {
    throw new PermissionDeniedError(`link ${name} is not this VM's tap`, { reason: "NOT_BANGERS" });
  }
  await ip(deps, "link", "del", "dev", name);
  return { existed: true };
}
