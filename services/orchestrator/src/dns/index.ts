export { DNS_ZONE, createDnsResponder, type DnsResponder, type DnsResponderOptions } from "./responder.js";
