// A Node worker for Reins: `node dist/examples/worker.js [SERVER] [KIND]` (after `npm run
// build`). Each task takes `steps` steps of `step_ms` (params), checkpointing each; a soft
// cancel (or an abort) wakes the step it waits in, and the task ends CANCELLED with the
// steps done. Prints `connected <worker id>` once welcomed; SIGTERM drains it. The README's
// "Workers in any language" shows it, and the polyglot test of the Python suite runs it.
import { setTimeout as sleep } from "node:timers/promises";
import { Cancelled, Worker } from "@reins/sdk";

const [server = "127.0.0.1:50051", kind = "summarize"] = process.argv.slice(2);
const worker = new Worker({
  server,
  kinds: [kind],
  maxConcurrency: 8,
  handler: async (ctx) => {
    const steps = Number(ctx.task.params.steps ?? 3);
    const done: number[] = [];
    try {
      for (let step = 1; step <= steps; step++) {
        await sleep(Number(ctx.task.params.step_ms ?? 100), undefined, { signal: ctx.signal });
        done.push(step);
        ctx.checkpoint({ step, by: "node" }, step / steps); // a partial result
      }
    } catch (err) {
      if (ctx.cancelRequested && !ctx.aborted) throw new Cancelled({ done, by: "node" }); // soft cancel
      throw err;
    }
    return { done, by: "node" };
  },
});
worker.on("connect", (id) => console.log(`connected ${id}`));
process.once("SIGTERM", () => void worker.close({ graceMs: 10_000 }));
await worker.run();
