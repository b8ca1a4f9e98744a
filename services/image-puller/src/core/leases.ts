/** Digests held by running pulls (counted: two pulls may share a layer). */
export interface Leases {
  /** Holds `digests` until the returned function is called. */
  hold(digests: readonly string[]): () => void;
  held(): ReadonlySet<string>;
}

export function createLeases(): Leases {
  const counts = new Map<string, number>();
  return {
    hold(digests) {
      for (const digest of digests) counts.set(digest, (counts.get(digest) ?? 0) + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        for (const digest of digests) {
          const left = (counts.get(digest) ?? 1) - 1;
          if (left === 0) counts.delete(digest);
          else counts.set(digest, left);
        }
      };
    },
    held: () => new Set(counts.keys()),
  };
}
