export * from "./guest-files.js";
export * from "./work-disk.js";
