// A Node worker runs tasks started by other languages' clients: Python (grpcio, stubs
// compiled from the package's proto copy) and Rust (the `reins` CLI). The worker is on
// replica a; the tasks are started through replica b.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { Client, Worker, type JsonObject } from "@reins/sdk";
import { Cluster, PACKAGE_DIR, pythonWithGrpc, reinsBinary, runAsync, uniqueKind, untilTerminal } from "./harness.js";

describe("polyglot", () => {
  let cluster: Cluster;
  let client: Client;
  let worker: Worker;
  let python: string;
  const kind = uniqueKind("polyglot");
  const seen = new Map<string, { params: JsonObject; labels: Record<string, string> }>();

  before(async () => {
    // The virtualenv install (first run only) may take a while on a fresh machine.
    [cluster, python] = await Promise.all([Cluster.start(), pythonWithGrpc()]);
    client = new Client(cluster.b.address);
    worker = new Worker({
      server: cluster.a.address,
      kinds: [kind],
      name: "polyglot",
      handler: (ctx) => {
        seen.set(ctx.task.id, { params: ctx.task.params, labels: ctx.task.labels });
        return { echoed: ctx.task.params, by: "node" };
      },
    });
    const connected = worker.connected();
    worker.run().catch(() => undefined);
    await connected;
  }, { timeout: 600_000 });

  after(async () => {
    await worker?.close({ graceMs: 0 });
    client?.close();
    await cluster?.stop();
  });

  const params = { topic: "interop", depth: 2, ratio: 0.5, tags: ["a", "b"], nested: { ok: true, none: null } };

  test("a task started from Python runs on the Node worker", async () => {
    const script = join(PACKAGE_DIR, "test", "fixtures", "start_task.py");
    const out = await runAsync(python, [
      script,
      join(PACKAGE_DIR, "proto"),
      cluster.b.address,
      kind,
      JSON.stringify(params),
      JSON.stringify({ from: "python" }),
    ]);
    const started = JSON.parse(out) as { id: string; kind: string };
    assert.equal(started.kind, kind);
    const done = await untilTerminal(client, started.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.equal(done.owner, "a");
    assert.ok(done.worker.startsWith("polyglot/"));
    assert.deepEqual(done.result, { echoed: params, by: "node" });
    assert.deepEqual(seen.get(started.id), { params, labels: { from: "python" } });
    assert.equal(done.description, "started from Python");
  });

  test("a task started from Rust (the reins CLI) runs on the Node worker", async () => {
    const out = await runAsync(reinsBinary(), [
      "--server",
      cluster.b.address,
      "--json",
      "start",
      kind,
      "--params",
      JSON.stringify(params),
      "--label",
      "from=rust",
    ]);
    const started = JSON.parse(out) as { id: string; kind: string };
    assert.equal(started.kind, kind);
    const done = await untilTerminal(client, started.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.deepEqual(done.result, { echoed: params, by: "node" });
    assert.deepEqual(seen.get(started.id), { params, labels: { from: "rust" } });
    // And the Rust CLI reads the Node worker's result back.
    const checked = JSON.parse(await runAsync(reinsBinary(), ["--server", cluster.a.address, "--json", "check", started.id]));
    assert.equal(checked.state, "TASK_STATE_COMPLETED");
    assert.deepEqual(checked.result, { echoed: params, by: "node" });
  });
});
