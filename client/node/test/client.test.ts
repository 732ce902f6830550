// The Client against two real replicas on a real Redis: every call through one replica,
// tasks run by the built-in `sleep` kind.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";

import { Client, ReinsError, isTerminal, type Task, type TaskEvent } from "@reins/sdk";
import { Cluster, PATIENCE_MS, eventually, untilTerminal, watchUntil } from "./harness.js";

const UNKNOWN_ID = "0190aaaa-0000-7000-8000-000000000000";

describe("Client", () => {
  let cluster: Cluster;
  let a: Client;
  let b: Client;

  before(async () => {
    cluster = await Cluster.start();
    a = new Client(cluster.a.address);
    b = new Client({ server: `http://${cluster.b.address}` });
  });

  after(async () => {
    a?.close();
    b?.close();
    await cluster?.stop();
  });

  test("start returns the task; check through the other replica reads the same record", async () => {
    const task = await a.start("sleep", {
      params: { steps: 1, step_ms: 1 },
      description: "node test",
      labels: { suite: "client" },
      sessionId: "s-1",
      maxAttempts: 2,
      timeoutMs: 60_000,
    });
    assert.equal(task.kind, "sleep");
    assert.ok(["PENDING", "RUNNING"].includes(task.state), task.state);
    assert.deepEqual(task.params, { steps: 1, step_ms: 1 });
    assert.deepEqual(task.labels, { suite: "client" });
    assert.equal(task.sessionId, "s-1");
    assert.equal(task.maxAttempts, 2);
    assert.equal(task.timeoutMs, 60_000);
    assert.ok(task.createdAt instanceof Date);
    const done = await untilTerminal(b, task.id);
    assert.equal(done.state, "COMPLETED");
    assert.deepEqual(done.result, { steps_completed: 1, steps: 1 });
    assert.deepEqual(await b.check(task.id), done);
  });

  test("watch yields every version in order and ends after the terminal state", async () => {
    // Watch from version 0 of a task started a moment ago: replay, then live.
    const task = await a.start("sleep", { params: { steps: 4, step_ms: 20 } });
    const events: TaskEvent[] = [];
    for await (const event of b.watch(task.id, { afterVersion: 1 })) {
      events.push(event);
    }
    const versions = events.map((e) => e.task.version);
    assert.ok(versions.length >= 2, `versions ${versions}`);
    assert.equal(versions[0], 2, `replay starts after version 1: ${versions}`);
    for (let i = 1; i < versions.length; i++) {
      assert.equal(versions[i], versions[i - 1]! + 1, `no gap or duplicate: ${versions}`);
    }
    const last = events.at(-1)!.task;
    assert.equal(last.state, "COMPLETED");
    assert.ok(events.slice(0, -1).every((e) => !isTerminal(e.task.state)));
    assert.deepEqual(last.partialResults, [{ step: 1 }, { step: 2 }, { step: 3 }, { step: 4 }]);
    assert.ok(events.every((e) => e.time instanceof Date));
  });

  test("a finished task's watch yields it once and ends", async () => {
    const task = await a.start("sleep", { params: { steps: 0, step_ms: 0 } });
    const done = await untilTerminal(a, task.id);
    const events: Task[] = [];
    for await (const { task: t } of b.watch(task.id)) events.push(t);
    assert.deepEqual(events, [done]);
  });

  test("leaving a watch early cancels the call (seen by the server: cancel_on_disconnect)", async () => {
    const task = await a.start("sleep", { params: { steps: 1000, step_ms: 50 } });
    for await (const event of b.watch(task.id, { cancelOnDisconnect: true })) {
      assert.equal(event.task.id, task.id);
      break; // the iterator's return() cancels the stream
    }
    const done = await untilTerminal(a, task.id);
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.cancel?.reason, "watcher disconnected");
  });

  test("aborting a watch's signal ends it with the signal's reason", async () => {
    const task = await a.start("sleep", { params: { steps: 1000, step_ms: 50 } });
    const controller = new AbortController();
    const reason = new Error("enough watching");
    await assert.rejects(
      (async () => {
        for await (const _ of b.watch(task.id, { signal: controller.signal })) {
          controller.abort(reason);
        }
      })(),
      (err) => err === reason,
    );
    await a.hardCancel(task.id);
  });

  test("an unknown task id is NOT_FOUND with reason TASK_NOT_FOUND", async () => {
    for (const call of [
      () => a.check(UNKNOWN_ID),
      () => b.softCancel(UNKNOWN_ID),
      () => b.hardCancel(UNKNOWN_ID),
      () => a.answer(UNKNOWN_ID, "x"),
    ]) {
      await assert.rejects(call(), (err) => {
        assert.ok(err instanceof ReinsError, String(err));
        assert.equal(err.code, grpc.status.NOT_FOUND);
        assert.equal(err.codeName, "NOT_FOUND");
        assert.equal(err.reason, "TASK_NOT_FOUND");
        assert.equal(err.domain, "reins.v1");
        assert.match(err.message, /not found/);
        return true;
      });
    }
    await assert.rejects(
      (async () => {
        for await (const _ of a.watch(UNKNOWN_ID)) assert.fail("no event expected");
      })(),
      (err) => err instanceof ReinsError && err.code === grpc.status.NOT_FOUND && err.reason === "TASK_NOT_FOUND",
    );
  });

  test("a bad request is INVALID_ARGUMENT naming every bad field", async () => {
    await assert.rejects(a.start("sleep", { params: { steps: "x" } }), (err) => {
      assert.ok(err instanceof ReinsError);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(err.reason, "INVALID_ARGUMENT");
      assert.deepEqual(
        err.fieldViolations.map((v) => v.field),
        ["params.steps", "params.step_ms"],
      );
      return true;
    });
    await assert.rejects(a.check("not-a-uuid"), (err) => err instanceof ReinsError && err.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(a.list({ pageSize: -1 }), (err) => err instanceof ReinsError && err.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(a.start("no-such-kind"), (err) => err instanceof ReinsError && err.reason === "KIND_UNKNOWN");
  });

  test("values JSON cannot carry are refused before anything is sent", async () => {
    await assert.rejects(a.start("sleep", { params: { steps: NaN } }), TypeError);
    await assert.rejects(a.start("sleep", { params: { steps: 1n } as unknown as Record<string, unknown> }), TypeError);
    assert.throws(() => new Client("no port"), TypeError);
    assert.throws(() => new Client("http://host:1/path"), TypeError);
  });

  test("list pages through active tasks in creation order, without duplicates", async () => {
    const labels = { suite: "list", run: String(Date.now()) };
    const started: string[] = [];
    for (let i = 0; i < 5; i++) {
      started.push((await a.start("sleep", { params: { steps: 1000, step_ms: 50 }, labels })).id);
    }
    try {
      const pages: string[][] = [];
      let pageToken = "";
      do {
        const page = await b.list({ labels, pageSize: 2, pageToken });
        pages.push(page.tasks.map((t) => t.id));
        assert.ok(page.tasks.every((t) => t.labels.run === labels.run && !isTerminal(t.state)));
        pageToken = page.nextPageToken;
      } while (pageToken !== "" && pages.length < 10);
      assert.deepEqual(pages.map((p) => p.length), [2, 2, 1]);
      assert.deepEqual(pages.flat(), started);
      const all: string[] = [];
      for await (const task of a.listAll({ labels, pageSize: 3 })) all.push(task.id);
      assert.deepEqual(all, started);
      assert.deepEqual((await a.list({ labels: { ...labels, other: "x" } })).tasks, []);
    } finally {
      await Promise.all(started.map((id) => a.hardCancel(id)));
    }
    assert.deepEqual((await a.list({ labels })).tasks, []);
  });

  test("soft cancel: REQUESTED, then CANCELLED at a checkpoint with the partial results", async () => {
    const task = await a.start("sleep", { params: { steps: 1000, step_ms: 20 } });
    await watchUntil(b, task.id, (t) => t.partialResults.length >= 2, "checkpointed twice");
    const response = await b.softCancel(task.id, { reason: "enough", graceMs: 10_000 });
    assert.equal(response.outcome, "REQUESTED");
    assert.equal(response.task.cancel?.mode, "SOFT");
    assert.equal(response.task.cancel?.reason, "enough");
    assert.ok(response.task.cancel?.graceDeadline instanceof Date);
    const done = await untilTerminal(a, task.id);
    assert.equal(done.state, "CANCELLED");
    assert.equal(done.cancel?.escalated, false);
    assert.ok(done.partialResults.length >= 2);
    assert.equal((await b.softCancel(task.id)).outcome, "ALREADY_CANCELLED");
  });

  test("hard cancel: CANCELLED when the call returns; a finished task is ALREADY_FINISHED", async () => {
    const task = await a.start("sleep", { params: { steps: 1000, step_ms: 20, ignore_soft_cancel: true } });
    const response = await b.hardCancel(task.id, { reason: "now" });
    assert.equal(response.outcome, "CANCELLED");
    assert.equal(response.task.state, "CANCELLED");
    assert.equal(response.task.cancel?.mode, "HARD");
    const quick = await a.start("sleep", { params: { steps: 0, step_ms: 0 } });
    await untilTerminal(a, quick.id);
    assert.equal((await b.hardCancel(quick.id)).outcome, "ALREADY_FINISHED");
  });

  test("answer resumes a task waiting for an answer; a task not waiting is TASK_NOT_WAITING", async () => {
    const task = await a.start("sleep", { params: { steps: 2, step_ms: 10, ask: "Which colour?" } });
    const waiting = await watchUntil(b, task.id, (t) => t.state === "WAITING_FOR_ANSWER", "waiting for an answer");
    assert.equal(waiting.question, "Which colour?");
    const answered = await b.answer(task.id, "blue");
    assert.notEqual(answered.state, "WAITING_FOR_ANSWER");
    const done = await untilTerminal(a, task.id);
    assert.equal(done.state, "COMPLETED");
    assert.equal((done.result as { answer: string }).answer, "blue");
    await assert.rejects(b.answer(task.id, "again"), (err) => {
      assert.ok(err instanceof ReinsError);
      assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
      assert.equal(err.reason, "TASK_NOT_WAITING");
      return true;
    });
  });

  test("a call's signal and deadline", async () => {
    const controller = new AbortController();
    controller.abort(new Error("never mind"));
    await assert.rejects(a.check(UNKNOWN_ID, { signal: controller.signal }), /never mind/);
    // A watch with a deadline of its own: DEADLINE_EXCEEDED, through the eventually helper's timeout path.
    const task = await a.start("sleep", { params: { steps: 1000, step_ms: 50 } });
    const started = Date.now();
    await assert.rejects(watchUntil(a, task.id, () => false, "never", 300), /not never within 300 ms/);
    assert.ok(Date.now() - started < PATIENCE_MS);
    await a.hardCancel(task.id);
    await eventually("gone from the list", async () =>
      (await a.list({})).tasks.some((t) => t.id === task.id) ? undefined : true,
    );
  });
});
