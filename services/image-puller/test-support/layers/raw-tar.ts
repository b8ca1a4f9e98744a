/**
 * A tar writer for tests that writes names, link targets and pax records as
 * the bytes given: tar-stream's packer encodes them as UTF-8, so it cannot
 * make the non-UTF-8 names and binary xattrs real layers carry.
 */
export interface RawEntry {
  /** Bytes of the name; a string is UTF-8. In the ustar header when it fits (100 bytes), else a pax `path`. */
  readonly name: Buffer | string;
  readonly type?: "file" | "link" | "symlink" | "char" | "block" | "directory" | "fifo";
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  /** Seconds since the epoch. */
  readonly mtime?: number;
  readonly linkname?: Buffer | string;
  readonly devmajor?: number;
  readonly devminor?: number;
  readonly content?: Buffer | string;
  /** Extra pax records (e.g. `SCHILY.xattr.security.capability`), values as bytes. */
  readonly pax?: Record<string, Buffer | string>;
  /** Puts name and link target in pax records even when they fit the header. */
  readonly paxNames?: boolean;
}

const TYPEFLAG: Record<NonNullable<RawEntry["type"]>, string> = {
  file: "0",
  link: "1",
  symlink: "2",
  char: "3",
  block: "4",
  directory: "5",
  fifo: "6",
};

const octal = (value: number, width: number) => `${value.toString(8).padStart(width - 1, "0")}\0`;

function header(fields: {
  name: Buffer;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname: Buffer;
  devmajor: number;
  devminor: number;
}): Buffer {
  const block = Buffer.alloc(512);
  fields.name.copy(block, 0, 0, 100);
  block.write(octal(fields.mode, 8), 100, "latin1");
  block.write(octal(fields.uid, 8), 108, "latin1");
  block.write(octal(fields.gid, 8), 116, "latin1");
  block.write(octal(fields.size, 12), 124, "latin1");
  block.write(octal(fields.mtime, 12), 136, "latin1");
  block.write(" ".repeat(8), 148, "latin1");
  block.write(fields.typeflag, 156, "latin1");
  fields.linkname.copy(block, 157, 0, 100);
  block.write("ustar\u000000", 257, "latin1");
  block.write(octal(fields.devmajor, 8), 329, "latin1");
  block.write(octal(fields.devminor, 8), 337, "latin1");
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return block;
}

/** One `<length> <key>=<value>\n` record; the length counts itself. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from("\n")]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

const padded = (data: Buffer) => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);

/** The tar of `entries`, ended by two zero blocks. */
export function rawTar(entries: readonly RawEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const entry of entries) {
    const name = Buffer.from(entry.name);
    const linkname = Buffer.from(entry.linkname ?? "");
    const content = Buffer.from(entry.content ?? "");
    const records: Buffer[] = [];
    if (entry.paxNames || name.length > 100) records.push(paxRecord("path", name));
    if (entry.paxNames || linkname.length > 100) records.push(paxRecord("linkpath", linkname));
    for (const [key, value] of Object.entries(entry.pax ?? {})) records.push(paxRecord(key, Buffer.from(value)));
    const common = { uid: 0, gid: 0, mtime: entry.mtime ?? 0, devmajor: 0, devminor: 0 };
    if (records.length > 0) {
      const pax = Buffer.concat(records);
      blocks.push(
        header({
          ...common,
          name: Buffer.from("PaxHeader"),
          typeflag: "x",
          mode: 0o644,
          size: pax.length,
          linkname: Buffer.alloc(0),
        }),
        padded(pax),
      );
    }
    const type = entry.type ?? "file";
    blocks.push(
      header({
        name: name.length > 100 ? Buffer.from("long-name") : name,
        typeflag: TYPEFLAG[type],
        mode: entry.mode ?? (type === "directory" ? 0o755 : 0o644),
        uid: entry.uid ?? 0,
        gid: entry.gid ?? 0,
        size: type === "file" ? content.length : 0,
        mtime: entry.mtime ?? 0,
        linkname: linkname.length > 100 ? Buffer.from("long-link") : linkname,
        devmajor: entry.devmajor ?? 0,
        devminor: entry.devminor ?? 0,
      }),
    );
    if (type === "file") blocks.push(padded(content));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}
