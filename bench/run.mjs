// `npm run bench`: prints numbers and ratios; nothing here asserts a time.
import { benchCliStart } from "./cli-start.mjs";
import { benchPull } from "./pull.mjs";
import { benchRpc } from "./rpc.mjs";
import { benchVm } from "./vm.mjs";

console.log(`banger benchmarks — node ${process.version}, ${new Date().toISOString()}`);
await benchRpc();
await benchCliStart();
await benchPull();
await benchVm();
