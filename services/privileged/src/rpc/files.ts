import { file_banger_privileged_v1_disk } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { file_banger_privileged_v1_host } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { file_banger_privileged_v1_network } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { file_banger_privileged_v1_vmm } from "@banger/gen/banger/privileged/v1/vmm_pb.js";

/** The generated files of the services the helper serves (for reflection). */
export const PRIVILEGED_FILES = [
  file_banger_privileged_v1_host,
  file_banger_privileged_v1_network,
  file_banger_privileged_v1_disk,
  file_banger_privileged_v1_vmm,
];
