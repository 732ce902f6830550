// Budgets, bulk cancel, RunTask and answer deadlines from Node, against two real replicas
// on a real Redis: the client through replica `b`, workers on replica `a`.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, afterEach, before, describe, test } from "node:test";

import { AnswerTimedOut, CancelRequested, Client, ReinsError, Worker, type Handler } from "@reins/sdk";
import { Cluster, PATIENCE_MS, eventually, uniqueKind, untilTerminal } from "./harness.js";

const LONG = { steps: 1000, step_ms: 50 };

describe("agent controls", () => {
  let cluster: Cluster;
  let b: Client;
  const workers: Worker[] = [];

  async function startWorker(kind: string, handler: Handler): Promise<Worker> {
    const worker = new Worker({ server: cluster.a.address, kinds: [kind], handler, maxConcurrency: 4 });
    workers.push(worker);
    const connected = worker.connected();
    worker.run().catch(() => undefined);
    await connected;
    return worker;
  }

  before(async () => {
    cluster = await Cluster.start();
    b = new Client(cluster.b.address);
  });

  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.close({ graceMs: 0 })));
  });

  after(async () => {
    b?.close();
    await cluster?.stop();
  });

  test("a budget stops a sleep task after exactly its steps", async () => {
    const task = await b.start("sleep", { params: { steps: 100, step_ms: 10 }, budget: { steps: 3 } });
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.cancel?.budgetExhausted, "steps");
    assert.equal(done.cancel?.reason, "budget exhausted: steps 3 of 3");
    assert.equal((await b.check(task.id)).subtreeUsage.steps, 3);
  });

  test("cancelTasks cancels a session and refuses its late starts", async () => {
    const sessionId = `node-${randomUUID()}`;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await b.start("sleep", { params: LONG, sessionId })).id);
    const dry = await b.cancelTasks({ sessionId, dryRun: true });
    assert.deepEqual([dry.matched, dry.cancelled, dry.taskIds], [3, 0, ids]);
    const done = await b.cancelTasks({ sessionId, hard: true, reason: "Stop" });
    assert.deepEqual([done.matched, done.cancelled, done.truncated], [3, 3, false]);
    await assert.rejects(b.start("sleep", { params: LONG, sessionId }), (err: ReinsError) => err.reason === "SESSION_CANCELLED");
    await assert.rejects(b.cancelTasks({}), (err: ReinsError) => err.codeName === "INVALID_ARGUMENT");
  });

  test("run streams to the end, and leaving early soft-cancels the task", async () => {
    const states: string[] = [];
    for await (const event of b.run("sleep", { params: { steps: 2, step_ms: 10 } })) states.push(event.task.state);
    assert.equal(states.at(-1), "COMPLETED");
    let id = "";
    for await (const event of b.run("sleep", { params: LONG })) {
      id = event.task.id;
      break;
    }
    const done = await untilTerminal(b, id);
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.cancel?.reason, "caller disconnected");
  });

  test("a worker reports usage, sees what is left, and its question times out", async () => {
    const kind = uniqueKind("budget");
    const seen: { assigned?: Record<string, number>; after?: Record<string, number>; timedOut?: boolean; reason?: string } = {};
    await startWorker(kind, async (ctx) => {
      seen.assigned = { ...ctx.task.budgetRemaining };
      ctx.progress(0.5, "spent", { usage: { tokens: 30 } });
      await eventually("the usage ack", () => (ctx.task.budgetRemaining.tokens === 70 ? true : undefined));
      seen.after = { ...ctx.task.budgetRemaining };
      try {
        await ctx.ask("go on?", { answerWithinMs: 200 });
      } catch (err) {
        seen.timedOut = err instanceof AnswerTimedOut;
      }
      ctx.progress(0.9, "more", { usage: { tokens: 80 } });
      await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
      seen.reason = ctx.cancelReason;
      throw new CancelRequested(ctx.cancelReason);
    });
    const task = await b.start(kind, { budget: { tokens: 100 } });
    const done = await untilTerminal(b, task.id, PATIENCE_MS);
    assert.deepEqual(seen.assigned, { tokens: 100 });
    assert.deepEqual(seen.after, { tokens: 70 });
    assert.equal(seen.timedOut, true);
    assert.equal(seen.reason, "budget exhausted: tokens 110 of 100");
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.answerTimedOut, true);
    assert.equal(done.usage.tokens, 110);
  });
});
