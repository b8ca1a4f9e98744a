import { codeName, codeOfKind, implementService } from "@banger/common";
import { SystemService, type ServiceStatusSchema } from "@banger/gen/banger/v1/system_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { collectStatus, type PeerProbe, type ServiceHealth } from "../core/status.js";
import { scopeOf } from "./scope.js";

export interface SystemServiceDeps {
  readonly self: () => ServiceHealth;
  readonly peers: readonly PeerProbe[];
}

export function createSystemService(deps: SystemServiceDeps): ServiceImpl<typeof SystemService> {
  return implementService(SystemService, {
    async getStatus(_req, ctx) {
      const services = await collectStatus(deps.self(), deps.peers, scopeOf(ctx));
      return { services: services.map(serviceStatusToProto) };
    },
  });
}

export function serviceStatusToProto(health: ServiceHealth): MessageInitShape<typeof ServiceStatusSchema> {
  const status: MessageInitShape<typeof ServiceStatusSchema> = {
    name: health.name,
    socket: health.socket,
    reachable: health.identity !== undefined,
    ...health.identity,
  };
  if (health.error) {
    status.errorCode = codeName(codeOfKind(health.error.kind));
    status.errorMessage = health.error.message;
  }
  return status;
}
