import { file_banger_privileged_v1_host } from "@banger/gen/banger/privileged/v1/host_pb.js";

/** The generated files of the services the helper serves (for reflection). */
export const PRIVILEGED_FILES = [file_banger_privileged_v1_host];
