// `npm run bench`: prints numbers and ratios; nothing here asserts a time.
// `npm run bench -- pull vm` runs only the named ones (rpc, cli-start, pull, vm, boot, fork, rss).
import { benchBoot } from "./boot.mjs";
import { benchCliStart } from "./cli-start.mjs";
import { benchFork } from "./fork.mjs";
import { benchPull } from "./pull.mjs";
import { benchRpc } from "./rpc.mjs";
import { benchRss } from "./rss.mjs";
import { benchVm } from "./vm.mjs";
import { printSummary } from "./lib.mjs";

const BENCHES = {
  rpc: benchRpc,
  "cli-start": benchCliStart,
  pull: benchPull,
  vm: benchVm,
  boot: benchBoot,
  fork: benchFork,
  rss: benchRss,
};
const wanted = process.argv.slice(2);
const unknown = wanted.filter((name) => !(name in BENCHES));
if (unknown.length > 0) {
  console.error(`unknown bench: ${unknown.join(", ")} (there are: ${Object.keys(BENCHES).join(", ")})`);
  process.exit(2);
}

console.log(`banger benchmarks — node ${process.version}, ${new Date().toISOString()}`);
for (const [name, bench] of Object.entries(BENCHES)) if (wanted.length === 0 || wanted.includes(name)) await bench();
printSummary();
