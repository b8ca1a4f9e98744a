/**
 * One DNS message in, at most one out: parsing a query, deciding the answer
 * (the rules are listed in responder.ts) and encoding it. No sockets here.
 *
 * The question is echoed byte for byte, not re-encoded: resolvers compare it
 * with what they sent (0x20 case randomisation included), and dns-packet
 * cannot round-trip every question (unknown classes, labels holding a dot).
 * dns-packet never compresses names, so the raw question can be spliced in
 * after the header without moving a pointer.
 */
import type { Logger } from "@banger/common";
import * as dnsPacket from "dns-packet";

/** The zone this server is authoritative for. */
export const DNS_ZONE = "vm";

/** A VM name as it appears as the first label of `<name>.vm`. */
const VM_LABEL = /^[a-z0-9][a-z0-9-]{0,62}$/;

const UDP_MAX_ANSWER = 512;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = (typeof RCODE)[keyof typeof RCODE];
const OPCODE_QUERY = 0;
const TYPE = { A: 1, NS: 2, SOA: 6, ANY: 255 } as const;
const CLASS = { IN: 1, ANY: 255 } as const;
const TC_BIT = 1 << 9;

/** What answering needs: the VM lookup, the logger and the TTL of answers. */
export interface AnswerContext {
  readonly lookup: (name: string) => string | undefined;
  readonly logger: Logger;
  readonly ttl: number;
}

/** The first (only) question of a query, as raw bytes and as labels. */
interface RawQuestion {
  readonly bytes: Buffer;
  readonly labels: readonly string[];
  readonly type: number;
  readonly class: number;
}

interface Query {
  readonly id: number;
  readonly opcode: number;
  readonly rd: boolean;
  readonly questionCount: number;
  readonly question: RawQuestion | undefined;
}

class MalformedQueryError extends Error {}

/**
 * Reads the first question straight from the packet (it starts right after
 * the header, so a compression pointer there can only be malformed).
 */
function readFirstQuestion(message: Buffer): RawQuestion {
  const labels: string[] = [];
  let offset = 12;
  for (;;) {
    const length = message[offset];
    if (length === undefined) throw new MalformedQueryError("question name runs past the packet");
    offset += 1;
    if (length === 0) break;
    if ((length & 0xc0) !== 0) throw new MalformedQueryError("compressed or extended label in the question");
    if (offset + length > message.length) throw new MalformedQueryError("question label runs past the packet");
    labels.push(message.toString("latin1", offset, offset + length));
    offset += length;
  }
  if (offset - 12 > 255) throw new MalformedQueryError("question name longer than 255 bytes");
  if (offset + 4 > message.length) throw new MalformedQueryError("question type and class run past the packet");
  return {
    bytes: message.subarray(12, offset + 4),
    labels,
    type: message.readUInt16BE(offset),
    class: message.readUInt16BE(offset + 2),
  };
}

/** Parses a query; throws MalformedQueryError for anything that should get no answer. */
function parseQuery(message: Buffer): Query {
  let decoded: dnsPacket.DecodedPacket;
  try {
    decoded = dnsPacket.decode(message);
  } catch (error) {
    throw new MalformedQueryError(`undecodable packet: ${(error as Error).message}`);
  }
  if (decoded.flag_qr) throw new MalformedQueryError("packet is a response");
  const questionCount = decoded.questions?.length ?? 0;
  return {
    id: decoded.id ?? 0,
    opcode: ((decoded.flags ?? 0) >> 11) & 0xf,
    rd: decoded.flag_rd,
    questionCount,
    question: questionCount > 0 ? readFirstQuestion(message) : undefined,
  };
}

interface Answer {
  readonly rcode: Rcode;
  readonly authoritative: boolean;
  readonly answers?: dnsPacket.Answer[];
  readonly authorities?: dnsPacket.Answer[];
}

function encodeResponse(query: Query, echoQuestion: boolean, answer: Answer): Buffer {
  const flags =
    (query.opcode << 11) |
    (answer.authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
    (query.rd ? dnsPacket.RECURSION_DESIRED : 0) |
    answer.rcode;
  const packet = dnsPacket.encode({
    type: "response",
    id: query.id,
    flags,
    questions: [],
    answers: answer.answers ?? [],
    authorities: answer.authorities ?? [],
  });
  if (!echoQuestion || query.question === undefined) return packet;
  const response = Buffer.concat([packet.subarray(0, 12), query.question.bytes, packet.subarray(12)]);
  response.writeUInt16BE(1, 4);
  return response;
}

/** Header and question only, TC set: "ask again over TCP". */
function truncated(response: Buffer, query: Query): Buffer {
  const questionLength = query.question?.bytes.length ?? 0;
  const out = Buffer.from(response.subarray(0, 12 + questionLength));
  out.writeUInt16BE(out.readUInt16BE(2) | TC_BIT, 2);
  out.fill(0, 6, 12);
  return out;
}

/** The pure part: what to answer to one parsed query. */
function answerFor(query: Query, lookup: (name: string) => string | undefined, ttl: number): Answer {
  const question = query.question;
  if (query.opcode !== OPCODE_QUERY) return { rcode: RCODE.NOTIMP, authoritative: false };
  if (query.questionCount !== 1 || question === undefined) return { rcode: RCODE.FORMERR, authoritative: false };

  const labels = question.labels.map((label) => label.toLowerCase());
  const inZone = labels.length > 0 && labels[labels.length - 1] === DNS_ZONE;
  if (!inZone || (question.class !== CLASS.IN && question.class !== CLASS.ANY)) {
    return { rcode: RCODE.REFUSED, authoritative: false };
  }

  const soa: dnsPacket.Answer = {
    type: "SOA",
    name: DNS_ZONE,
    ttl,
    data: {
      mname: DNS_ZONE,
      rname: `hostmaster.${DNS_ZONE}`,
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: ttl,
    },
  };
  const nodata: Answer = { rcode: RCODE.NOERROR, authoritative: true, authorities: [soa] };
  const nxdomain: Answer = { rcode: RCODE.NXDOMAIN, authoritative: true, authorities: [soa] };

  if (labels.length === 1) {
    return question.type === TYPE.SOA || question.type === TYPE.ANY
      ? { rcode: RCODE.NOERROR, authoritative: true, answers: [soa] }
      : nodata;
  }
  const name = labels[0] ?? "";
  if (labels.length !== 2 || !VM_LABEL.test(name)) return nxdomain;
  const address = lookup(name);
  if (address === undefined) return nxdomain;
  if (question.type !== TYPE.A && question.type !== TYPE.ANY) return nodata;
  // The owner name as asked (case included), like the echoed question.
  const owner = question.labels.join(".");
  return { rcode: RCODE.NOERROR, authoritative: true, answers: [{ type: "A", name: owner, ttl, data: address }] };
}

const describeName = (question: RawQuestion | undefined): string | undefined =>
  question === undefined ? undefined : `${question.labels.join(".")}.`;

/** One message in, at most one out; never throws. `undefined` means "send nothing". */
export function respond(
  context: AnswerContext,
  message: Buffer,
  transport: "udp" | "tcp",
  peer: string,
): Buffer | undefined {
  const { lookup, logger, ttl } = context;
  let query: Query;
  try {
    query = parseQuery(message);
  } catch (error) {
    if (error instanceof MalformedQueryError) {
      logger.debug({ peer, transport, reason: error.message }, "dns: malformed packet dropped");
    } else {
      logger.error({ peer, transport, err: error }, "dns: unexpected error parsing a packet");
    }
    return undefined;
  }
  const qname = describeName(query.question);
  try {
    const answer = answerFor(query, lookup, ttl);
    const response = encodeResponse(query, answer.rcode !== RCODE.FORMERR, answer);
    return transport === "udp" && response.length > UDP_MAX_ANSWER ? truncated(response, query) : response;
  } catch (error) {
    logger.error({ peer, transport, qname, qtype: query.question?.type, err: error }, "dns: answering failed");
    try {
      return encodeResponse(query, true, { rcode: RCODE.SERVFAIL, authoritative: false });
    } catch {
      return undefined;
    }
  }
}
