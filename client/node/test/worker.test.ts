// The Node Worker against two real replicas on a real Redis. Workers connect to replica
// `a`; tasks are started, watched, cancelled and answered through replica `b`, so every
// step crosses replicas (b → Redis → a → worker).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, afterEach, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";

import {
  Aborted,
  Cancelled,
  Client,
  ReinsError,
  Worker,
  type Handler,
  type TaskContext,
  type TraceEntry,
  type WorkerOptions,
} from "@reins/sdk";
import { Cluster, PACKAGE_DIR, PATIENCE_MS, eventually, uniqueKind, untilTerminal, watchUntil } from "./harness.js";

/** What a handler saw, recorded when it ended. */
interface Seen {
  ended: string;
  aborted: boolean;
  abortReason: string;
  cancelRequested: boolean;
  signalAborted: boolean;
  signalReason: unknown;
}

/** Wraps a handler: records how each task's handler ended and every message on the stream. */
class Recorder {
  readonly seen = new Map<string, Seen>();
  readonly messages: TraceEntry[] = [];
  private readonly waiters = new Map<string, (seen: Seen) => void>();

  constructor(private readonly inner: Handler) {}

  readonly handler: Handler = async (ctx: TaskContext) => {
    let ended = "returned";
    try {
      return await this.inner(ctx);
    } catch (err) {
      ended = err instanceof Error ? err.name : String(err);
      throw err;
    } finally {
      const seen: Seen = {
        ended,
        aborted: ctx.aborted,
        abortReason: ctx.abortReason,
        cancelRequested: ctx.cancelRequested,
        signalAborted: ctx.signal.aborted,
        signalReason: ctx.signal.reason,
      };
      this.seen.set(ctx.task.id, seen);
      this.waiters.get(ctx.task.id)?.(seen);
    }
  };

  readonly trace = (entry: TraceEntry) => {
    this.messages.push(entry);
  };

  /** Resolves when the handler of `taskId` has ended. */
  ended(taskId: string): Promise<Seen> {
    const seen = this.seen.get(taskId);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the handler of ${taskId} did not end`)), PATIENCE_MS);
      this.waiters.set(taskId, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
    });
  }

  sent(taskId: string): string[] {
    return this.messages.filter((m) => m.direction === "send" && m.taskId === taskId).map((m) => m.type);
  }

  received(taskId: string): string[] {
    return this.messages.filter((m) => m.direction === "recv" && m.taskId === taskId).map((m) => m.type);
  }
}

/** Resolves when `signal` is aborted. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/** A handler in steps: a checkpoint per step; on a soft cancel, stops with what it did. */
const stepper: Handler = async (ctx) => {
  const steps = Number(ctx.task.params.steps ?? 3);
  const stepMs = Number(ctx.task.params.step_ms ?? 10);
  const done: number[] = [];
  for (let step = 1; step <= steps; step++) {
    await new Promise((resolve) => setTimeout(resolve, stepMs)); // the work a step does
    if (ctx.aborted) return undefined;
    done.push(step);
    if (ctx.checkpoint({ step }, step / steps, `step ${step}/${steps}`)) {
      throw new Cancelled({ done, reason: ctx.cancelReason });
    }
  }
  const answer = typeof ctx.task.params.ask === "string" ? await ctx.ask(ctx.task.params.ask) : null;
  return { done, answer };
};

describe("Worker", () => {
  let cluster: Cluster;
  let b: Client;
  const workers: Worker[] = [];

  /** Starts a worker (closed after the test) and waits for the server's welcome. */
  async function startWorker(options: Omit<WorkerOptions, "server"> & { server?: string }): Promise<Worker> {
    const worker = new Worker({ server: cluster.a.address, ...options });
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

  test("runs a task started on another replica; ctx.task has the assignment", async () => {
    const kind = uniqueKind("basic");
    let info: TaskContext["task"] | undefined;
    const worker = await startWorker({
      kinds: [kind],
      name: "node-test",
      handler: (ctx) => {
        info = ctx.task;
        return { hello: ctx.task.params.who, nested: { list: [1, "two", null, true] } };
      },
    });
    const parent = await b.start("sleep", { params: { steps: 1000, step_ms: 50 } });
    const task = await b.start(kind, {
      params: { who: "node", n: 3 },
      labels: { team: "sdk" },
      sessionId: "session-7",
      parentId: parent.id,
      description: "from the test",
    });
    const done = await untilTerminal(b, task.id);
    await b.hardCancel(parent.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.deepEqual(done.result, { hello: "node", nested: { list: [1, "two", null, true] } });
    assert.equal(done.owner, "a");
    assert.equal(done.worker, `node-test/${worker.workerId}`);
    assert.ok(info);
    assert.equal(info.id, task.id);
    assert.equal(info.kind, kind);
    assert.deepEqual(info.params, { who: "node", n: 3 });
    assert.deepEqual(info.labels, { team: "sdk" });
    assert.equal(info.sessionId, "session-7");
    assert.equal(info.parentId, parent.id);
    assert.equal(info.description, "from the test");
    assert.equal(info.attempt, 1);
    assert.equal(worker.heartbeatIntervalMs, 10_000);
  });

  test("soft cancel: ctx.signal aborts with the reason; Cancelled(result) keeps the partial results", async () => {
    const kind = uniqueKind("soft");
    const recorder = new Recorder(stepper);
    await startWorker({ kinds: [kind], handler: recorder.handler, trace: recorder.trace });
    const task = await b.start(kind, { params: { steps: 1000, step_ms: 20 } });
    await watchUntil(b, task.id, (t) => t.partialResults.length >= 2, "checkpointed twice");

    const response = await b.softCancel(task.id, { reason: "enough" });
    assert.equal(response.outcome, "REQUESTED");

    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "CANCELLED", JSON.stringify(done));
    assert.equal(done.cancel?.mode, "SOFT");
    assert.equal(done.cancel?.escalated, false);
    const result = done.result as { done: number[]; reason: string };
    assert.equal(result.reason, "enough");
    assert.ok(result.done.length >= 2);
    assert.deepEqual(done.partialResults, result.done.map((step) => ({ step })));
    const seen = await recorder.ended(task.id);
    assert.equal(seen.ended, "Cancelled");
    assert.equal(seen.aborted, false);
    assert.equal(seen.signalAborted, true);
    assert.equal(seen.signalReason, "enough");
    assert.ok(recorder.received(task.id).includes("cancel"));
    assert.equal(recorder.sent(task.id).at(-1), "cancelAck");
  });

  test("a handler that throws the signal's AbortError after a soft cancel acknowledges it", async () => {
    const kind = uniqueKind("abort-error");
    await startWorker({
      kinds: [kind],
      handler: async (ctx) => {
        ctx.checkpoint({ started: true }, 0.1);
        const { setTimeout: sleep } = await import("node:timers/promises");
        await sleep(3 * PATIENCE_MS, undefined, { signal: ctx.signal }); // rejects with an AbortError
      },
    });
    const task = await b.start(kind);
    await watchUntil(b, task.id, (t) => t.partialResults.length === 1, "checkpointed");
    await b.softCancel(task.id, { reason: "stop" });
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.result, undefined);
    assert.deepEqual(done.partialResults, [{ started: true }]);
  });

  test("hard cancel: ctx.aborted, the signal aborted, nothing sent about the task afterwards", async () => {
    const kind = uniqueKind("hard");
    const recorder = new Recorder(async (ctx) => {
      ctx.checkpoint({ step: 1 }, 0.5);
      await aborted(ctx.signal);
      ctx.progress(0.9, "after the abort"); // dropped
      return { too: "late" }; // dropped
    });
    await startWorker({ kinds: [kind], handler: recorder.handler, trace: recorder.trace });
    const task = await b.start(kind);
    await watchUntil(b, task.id, (t) => t.partialResults.length === 1, "checkpointed");

    const response = await b.hardCancel(task.id, { reason: "stop now" });
    assert.equal(response.outcome, "CANCELLED");
    assert.equal(response.task.state, "CANCELLED");

    const seen = await recorder.ended(task.id);
    assert.equal(seen.aborted, true);
    assert.equal(seen.abortReason, "stop now");
    assert.equal(seen.signalReason, "stop now");
    assert.ok(recorder.received(task.id).includes("abort"));
    assert.deepEqual(recorder.sent(task.id), ["progress"], "only the checkpoint before the abort");
    const final = await b.check(task.id);
    assert.equal(final.state, "CANCELLED");
    assert.equal(final.result, undefined);
    assert.equal(final.version, response.task.version);
  });

  test("a question asked on replica a is answered through replica b", async () => {
    const kind = uniqueKind("ask");
    const recorder = new Recorder(stepper);
    await startWorker({ kinds: [kind], handler: recorder.handler, trace: recorder.trace });
    const task = await b.start(kind, { params: { steps: 1, step_ms: 1, ask: "Which sources?" } });
    const waiting = await watchUntil(b, task.id, (t) => t.state === "WAITING_FOR_ANSWER", "waiting for an answer");
    assert.equal(waiting.question, "Which sources?");
    assert.equal(waiting.owner, "a");

    await b.answer(task.id, "arxiv");
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.deepEqual(done.result, { done: [1], answer: "arxiv" });
    assert.equal(done.answer, "arxiv");
    assert.ok(recorder.received(task.id).includes("answer"));
  });

  test("a soft cancel while waiting for an answer rejects ask() with CancelRequested", async () => {
    const kind = uniqueKind("ask-cancel");
    const recorder = new Recorder(stepper);
    await startWorker({ kinds: [kind], handler: recorder.handler });
    const task = await b.start(kind, { params: { steps: 1, step_ms: 1, ask: "Well?" } });
    await watchUntil(b, task.id, (t) => t.state === "WAITING_FOR_ANSWER", "waiting for an answer");
    await b.softCancel(task.id, { reason: "no answer" });
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "CANCELLED");
    assert.equal((await recorder.ended(task.id)).ended, "CancelRequested");
  });

  test("a handler that throws fails the task; a result that is not JSON too, and the stream stays", async () => {
    const kind = uniqueKind("fail");
    let calls = 0;
    await startWorker({
      kinds: [kind],
      handler: (ctx) => {
        calls += 1;
        if (ctx.task.params.mode === "throw") throw new Error("no sources about nothing");
        if (ctx.task.params.mode === "nan") return { x: NaN };
        return { ok: true };
      },
    });
    const thrown = await untilTerminal(b, (await b.start(kind, { params: { mode: "throw" } })).id);
    assert.equal(thrown.state, "FAILED");
    assert.equal(thrown.error, "no sources about nothing");
    const nan = await untilTerminal(b, (await b.start(kind, { params: { mode: "nan" } })).id);
    assert.equal(nan.state, "FAILED");
    assert.match(nan.error, /not JSON/);
    const ok = await untilTerminal(b, (await b.start(kind, { params: { mode: "ok" } })).id);
    assert.equal(ok.state, "COMPLETED");
    assert.equal(calls, 3);
  });

  test("maxConcurrency is respected: never more handlers at once, the rest wait PENDING", async () => {
    const kind = uniqueKind("concurrency");
    let running = 0;
    let most = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    await startWorker({
      kinds: [kind],
      maxConcurrency: 2,
      handler: async () => {
        running += 1;
        most = Math.max(most, running);
        try {
          await gate;
          return { ok: true };
        } finally {
          running -= 1;
        }
      },
    });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await b.start(kind)).id);
    await eventually("two running and three pending", async () => {
      const states = await Promise.all(ids.map(async (id) => (await b.check(id)).state));
      const count = (s: string) => states.filter((x) => x === s).length;
      return running === 2 && count("RUNNING") === 2 && count("PENDING") === 3 ? true : undefined;
    });
    release();
    const done = await Promise.all(ids.map((id) => untilTerminal(b, id)));
    assert.deepEqual(done.map((t) => t.state), Array(5).fill("COMPLETED"));
    assert.equal(most, 2);
  });

  test("worker loss: a SIGKILLed worker process's task is requeued to another Node worker", async () => {
    const kind = uniqueKind("loss");
    const script = join(PACKAGE_DIR, "dist", "test", "fixtures", "worker-process.js");
    const child = spawn(process.execPath, [script, cluster.a.address, kind], { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise((resolve) => child.once("exit", resolve));
    try {
      const lines = createInterface({ input: child.stdout! });
      const said = (prefix: string) =>
        new Promise<string>((resolve) => {
          const onLine = (line: string) => {
            if (line.startsWith(prefix)) {
              lines.off("line", onLine);
              resolve(line.slice(prefix.length));
            }
          };
          lines.on("line", onLine);
        });
      const running = said("running ");
      await said("connected ");
      const task = await b.start(kind, { maxAttempts: 2 });
      assert.equal(await running, task.id);
      await watchUntil(b, task.id, (t) => t.worker.startsWith("doomed/"), "running on the doomed worker");

      child.kill("SIGKILL");
      await exited;
      const requeued = await watchUntil(b, task.id, (t) => t.state === "PENDING", "back to PENDING");
      assert.equal(requeued.attempt, 1);

      const second = await startWorker({
        server: cluster.b.address,
        kinds: [kind],
        name: "second",
        handler: (ctx) => ({ attempt: ctx.task.attempt }),
      });
      const done = await untilTerminal(b, task.id);
      assert.equal(done.state, "COMPLETED", JSON.stringify(done));
      assert.equal(done.attempt, 2);
      assert.equal(done.owner, "b");
      assert.equal(done.worker, `second/${second.workerId}`);
      assert.deepEqual(done.result, { attempt: 2 });
    } finally {
      child.kill("SIGKILL");
    }
  });

  test("close() without finishing: the handler is aborted and the task requeued to another worker", async () => {
    const kind = uniqueKind("close-requeue");
    let started!: (id: string) => void;
    const running = new Promise<string>((resolve) => (started = resolve));
    const recorder = new Recorder(async (ctx) => {
      started(ctx.task.id);
      await aborted(ctx.signal);
      throw new Aborted(ctx.abortReason);
    });
    const first = await startWorker({ kinds: [kind], name: "first", handler: recorder.handler, trace: recorder.trace });
    const task = await b.start(kind, { maxAttempts: 2 });
    assert.equal(await running, task.id); // the record says RUNNING before the assignment arrives

    await first.close({ graceMs: 0 });
    const seen = await recorder.ended(task.id);
    assert.equal(seen.aborted, true);
    assert.equal(seen.abortReason, "the worker is closing", JSON.stringify(recorder.messages.map((m) => [m.direction, m.type, m.taskId])));
    assert.deepEqual(recorder.sent(task.id), [], "nothing sent about the task");

    await startWorker({ kinds: [kind], name: "second", handler: (ctx) => ({ attempt: ctx.task.attempt }) });
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.equal(done.attempt, 2);
    assert.ok(done.worker.startsWith("second/"));
  });

  test("close() lets a running handler finish and report, then ends the stream; run() resolves", async () => {
    const kind = uniqueKind("close-drain");
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    const worker = new Worker({
      server: cluster.a.address,
      kinds: [kind],
      handler: async () => {
        started();
        await gate;
        return { finished: true };
      },
    });
    const connected = worker.connected();
    const ran = worker.run();
    await connected;
    const task = await b.start(kind);
    await running;

    const closed = worker.close({ graceMs: PATIENCE_MS });
    let closedYet = false;
    void closed.then(() => (closedYet = true));
    await watchUntil(b, task.id, (t) => t.state === "RUNNING", "running");
    assert.equal(closedYet, false, "close() waits for the handler");
    release();
    await closed;
    await ran;
    const done = await b.check(task.id);
    assert.equal(done.state, "COMPLETED", JSON.stringify(done));
    assert.deepEqual(done.result, { finished: true });
    // Closed: a new task of the kind waits for another worker.
    const next = await b.start(kind);
    assert.equal(next.state, "PENDING");
    await b.hardCancel(next.id);
  });

  test("reconnects with backoff after its replica dies and comes back on the same address", async () => {
    const kind = uniqueKind("reconnect");
    const port = (await import("./harness.js")).freePort;
    const listen = `127.0.0.1:${await port()}`;
    let replica = await cluster.replica("c", listen);
    const disconnects: { error: ReinsError | undefined; reconnectInMs: number }[] = [];
    const worker = await startWorker({
      server: listen,
      kinds: [kind],
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      handler: () => ({ via: "c" }),
    });
    worker.on("disconnect", (info) => disconnects.push(info));
    const firstId = worker.workerId;

    await cluster.kill(replica);
    await eventually("a disconnect seen", () => (disconnects.length > 0 ? true : undefined));
    const reconnected = worker.connected();
    replica = await cluster.replica("c", listen);
    const secondId = await reconnected;
    assert.notEqual(secondId, firstId);
    assert.ok(disconnects.every((d) => d.reconnectInMs <= 200), JSON.stringify(disconnects));
    assert.ok(disconnects.some((d) => d.error?.code === grpc.status.UNAVAILABLE), JSON.stringify(disconnects));

    const done = await untilTerminal(b, (await b.start(kind)).id);
    assert.equal(done.state, "COMPLETED");
    assert.equal(done.owner, "c");
    await worker.close({ graceMs: 0 });
    await cluster.kill(replica);
  });

  test("with no server it retries with growing delays; close() interrupts the wait", async () => {
    const { freePort } = await import("./harness.js");
    const nobody = `127.0.0.1:${await freePort()}`;
    const worker = new Worker({
      server: nobody,
      kinds: [uniqueKind("nobody")],
      reconnect: { initialDelayMs: 40, maxDelayMs: 4000 },
      handler: () => null,
    });
    const delays: number[] = [];
    worker.on("disconnect", ({ error, reconnectInMs }) => {
      assert.equal(error?.code, grpc.status.UNAVAILABLE);
      delays.push(reconnectInMs);
    });
    const ran = worker.run();
    await eventually("six attempts", () => (delays.length >= 6 ? true : undefined));
    // Bounds 40, 80, 160, 320, 640, 1280 ms; each delay in the upper half of its bound.
    delays.slice(0, 6).forEach((delay, i) => {
      const bound = 40 * 2 ** i;
      assert.ok(delay >= bound / 2 && delay <= bound, `delay ${i}: ${delay} for bound ${bound}`);
    });
    const closing = Date.now();
    await worker.close();
    await ran;
    assert.ok(Date.now() - closing < 500, "close() does not wait out the backoff");
  });

  test("a hello the server refuses (a built-in kind) makes run() reject, without retrying", async () => {
    const worker = new Worker({ server: cluster.a.address, kinds: ["sleep"], handler: () => null });
    const connected = worker.connected();
    await assert.rejects(worker.run(), (err) => {
      assert.ok(err instanceof ReinsError);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /built-in/);
      return true;
    });
    await assert.rejects(connected, ReinsError);
    await worker.close();
  });
});
