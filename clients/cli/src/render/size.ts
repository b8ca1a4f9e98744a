/** Bytes as MiB with one decimal: `1.5 MiB`. */
export function mib(bytes: bigint): string {
  return `${(Number(bytes) / 1048576).toFixed(1)} MiB`;
}
