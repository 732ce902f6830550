// A Worker moving off a draining replica (WorkerCommand.reconnect). The worker's channel
// balances over both replicas (round_robin), as a Kubernetes Service would; its task was
// started on one, that replica is drained (SIGTERM), and the worker moves to the other
// with the task, which runs on without restarting (same attempt, handler called once).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, Worker, type TaskContext } from "@reins/sdk";
import { Cluster, PATIENCE_MS, uniqueKind, untilTerminal, watchUntil } from "./harness.js";

let cluster: Cluster;

before(async () => {
  cluster = await Cluster.start();
});

after(async () => {
  await cluster.stop();
});

test("a worker moves with its task when its replica drains", async () => {
  const kind = uniqueKind("moving");
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const calls: string[] = [];
  const worker = new Worker({
    server: `ipv4:${cluster.a.address},${cluster.b.address}`,
    channelOptions: { "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }) },
    kinds: [kind],
    maxConcurrency: 2,
    name: "node-mover",
    handler: async (ctx: TaskContext) => {
      calls.push(ctx.task.id);
      ctx.checkpoint({ page: 1 }, 0.5);
      await released;
      return { found: true };
    },
  });
  const connected = worker.connected();
  const running = worker.run().catch(() => undefined);
  await connected;
  const viaA = new Client(cluster.a.address);
  try {
    const task = await viaA.start(kind);
    const checkpointed = await watchUntil(viaA, task.id, (t) => t.partialResults.length === 1, "checkpointed");
    const [drained, other] =
      checkpointed.owner === "a" ? [cluster.a, cluster.b] : [cluster.b, cluster.a];
    const exited = drained.drain();
    const viaOther = new Client(other.address);
    try {
      const moved = await watchUntil(viaOther, task.id, (t) => t.owner === other.replicaId, "adopted");
      assert.equal(moved.state, "RUNNING");
      assert.equal(moved.attempt, checkpointed.attempt);
      assert.equal(await exited, 0, "the drained replica exits once idle");
      release();
      const done = await untilTerminal(viaOther, task.id, PATIENCE_MS);
      assert.equal(done.state, "COMPLETED", JSON.stringify(done));
      assert.equal(done.attempt, checkpointed.attempt, "the task was not restarted");
      assert.deepEqual(done.result, { found: true });
      assert.equal(done.partialResults.length, 1, "the checkpoint moved along");
      assert.deepEqual(calls, [task.id], "the handler ran once");
    } finally {
      viaOther.close();
    }
  } finally {
    viaA.close();
    await worker.close({ graceMs: 0 });
    await running;
  }
});
