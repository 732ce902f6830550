// The worker: one WorkerService.Connect stream per process, one async handler per task.
import * as grpc from "@grpc/grpc-js";
import { EventEmitter } from "node:events";
import { hostname } from "node:os";
import { debuglog } from "node:util";

import { parseServer, type ConnectionOptions } from "./address.js";
import { Backoff, type BackoffOptions } from "./backoff.js";
import { Aborted, CancelRequested, Cancelled, TaskContext, type Outbox, type Outcome } from "./context.js";
import { fromDuration, fromTask, fromTimestamp } from "./convert.js";
import { ReinsError, toReinsError } from "./errors.js";
import type { WorkerCommand__Output } from "./gen/reins/v1/WorkerCommand.js";
import type { WorkerMessage } from "./gen/reins/v1/WorkerMessage.js";
import type { WorkerServiceClient } from "./gen/reins/v1/WorkerService.js";
import { reinsV1 } from "./proto.js";

const debug = debuglog("reins");

/** Runs one task: resolves with its result (JSON), or throws. See the README's table. */
export type Handler = (ctx: TaskContext) => unknown;

/** One message on the stream, for `trace`: which one, about which task. */
export interface TraceEntry {
  direction: "send" | "recv";
  /** `hello`, `progress`, `ask`, `complete`, `fail`, `cancelAck` / `welcome`, `assign`, `cancel`, `abort`, `answer`, `usageAck`, `reconnect`. */
  type: string;
  /** `""` for hello and welcome. */
  taskId: string;
  /** The message as the proto loader represents it. */
  message: unknown;
}

export interface WorkerOptions extends ConnectionOptions {
  /** The task kinds this worker runs (not built-in ones). */
  kinds: string[];
  /** Tasks it runs at once (default 1); the server assigns no more. */
  maxConcurrency?: number;
  handler: Handler;
  /** For logs and `Task.worker` (default `node-worker@<hostname>`). */
  name?: string;
  /** How long `close()` lets running handlers finish by default (ms; default 30 000). */
  closeGraceMs?: number;
  /** Reconnect delays (default 100 ms doubling to 5 s, with jitter). */
  reconnect?: BackoffOptions;
  /** Sees every message sent and received. */
  trace?: (entry: TraceEntry) => void;
}

/** Events a Worker emits. */
export interface WorkerEvents {
  /** The server welcomed the stream: `workerId` is recorded on the tasks it runs. */
  connect: [workerId: string];
  /** The stream ended; the worker reconnects after `reconnectInMs` unless closing. */
  disconnect: [info: { error: ReinsError | undefined; reconnectInMs: number }];
  /** Something was ignored (a command about a task this worker does not run, …). */
  warning: [message: string];
}

/**
 * Codes that reconnecting cannot fix: `run()` rejects with them. A refused `hello` (a
 * built-in kind, no kind: INVALID_ARGUMENT), a protocol violation (FAILED_PRECONDITION),
 * a server without WorkerService, missing credentials.
 */
const FATAL = new Set<grpc.status>([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNIMPLEMENTED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
]);

/** How many streams a move opens before the worker stays where it is. */
const MOVE_ATTEMPTS = 20;

/** How long `close()` waits for the server to end the stream after the worker half-closed it. */
const END_GRACE_MS = 2000;

/** One Connect stream and the tasks assigned on it. */
class Session implements Outbox {
  readonly tasks = new Map<string, TaskContext>();
  open = true;
  /** The worker half-closed the stream (closing): assignments still in flight are not run. */
  halfClosed = false;
  welcomed = false;
  /** Messages held back while the worker moves to another replica (`reconnect`). */
  held: WorkerMessage[] | undefined;
  /** The stream the worker moved to: what its tasks send goes there. */
  movedTo: Session | undefined;
  /** Called with `welcome.adopted` when a stream opened by a move is welcomed. */
  onWelcome: ((adopted: string[]) => void) | undefined;
  /** Resolves once a move off this stream has succeeded or given up (at once: no move). */
  moved: Promise<void> = Promise.resolve();
  private movedResolve: (() => void) | undefined;
  private endedWith: ReinsError | undefined;
  readonly ended: Promise<ReinsError | undefined>;
  private endedResolve!: (error: ReinsError | undefined) => void;

  constructor(
    readonly call: grpc.ClientDuplexStream<WorkerMessage, WorkerCommand__Output>,
    private readonly worker: Worker,
  ) {
    this.ended = new Promise((resolve) => (this.endedResolve = resolve));
  }

  send(message: WorkerMessage): void {
    if (this.held !== undefined) {
      this.held.push(message);
      return;
    }
    if (this.movedTo !== undefined) {
      this.movedTo.send(message);
      return;
    }
    if (!this.open) {
      return; // the stream is gone: the server settles its tasks without us
    }
    this.worker._trace("send", message);
    this.call.write(message);
  }

  warn(message: string): void {
    this.worker._warn(message);
  }

  /** A move off this stream begins: its end no longer ends its tasks until the move settles. */
  beginMove(): void {
    this.held = [];
    this.moved = new Promise((resolve) => (this.movedResolve = resolve));
  }

  /** The move succeeded (its tasks went along) or gave up. */
  moveSettled(): void {
    const settle = this.movedResolve;
    this.movedResolve = undefined;
    if (!this.open) {
      this.abortTasks(this.endedWith);
    }
    settle?.();
  }

  /** The stream ended: every task still on it is over for this worker (after a move settles). */
  end(error: ReinsError | undefined): void {
    this.open = false;
    this.endedWith = error;
    if (this.movedResolve === undefined) {
      this.abortTasks(error);
    }
    this.endedResolve(error);
  }

  private abortTasks(error: ReinsError | undefined): void {
    const reason = `the worker's stream ended${error === undefined ? "" : `: ${error.message}`}`;
    for (const ctx of this.tasks.values()) {
      ctx._abort(reason);
    }
    this.tasks.clear();
  }
}

/**
 * A worker process's connection to a Reins replica.
 *
 * ```ts
 * const worker = new Worker({ server: "127.0.0.1:50051", kinds: ["research"], maxConcurrency: 4,
 *   handler: async (ctx) => { … return result; } });
 * const running = worker.run();   // resolves after close(); rejects on a fatal error
 * …
 * await worker.close();           // stop taking tasks, let running handlers finish, end the stream
 * ```
 *
 * `run()` reconnects by itself (backoff with jitter) whenever the stream ends; tasks that
 * were running then are aborted locally (`ctx.aborted`) because the server settles them
 * (retried if attempts remain). Events: `connect`, `disconnect`, `warning`.
 */
export class Worker extends EventEmitter<WorkerEvents> {
  readonly name: string;
  readonly kinds: readonly string[];
  readonly maxConcurrency: number;
  /** The id the server gave the current (or last) stream (`welcome.worker_id`). */
  workerId: string | undefined;
  /** How often the server pings the stream (`welcome.heartbeat_interval`), in ms. */
  heartbeatIntervalMs: number | undefined;

  private readonly handler: Handler;
  private readonly stub: WorkerServiceClient;
  private readonly backoff: Backoff;
  private readonly closeGraceMs: number;
  private readonly traceFn: ((entry: TraceEntry) => void) | undefined;
  /** The stream now open, if any. */
  private session: Session | undefined;
  /** Every handler still running, on this stream or a lost one: what close() waits for. */
  private readonly handlers = new Map<TaskContext, Promise<void>>();
  /** Aborted by close(): wakes the run loop out of a backoff or a wait for capacity. */
  private readonly closing = new AbortController();
  /** Settled when run() returns. */
  private runDone: Promise<void> | undefined;
  private connectWaiters: { resolve: (id: string) => void; reject: (err: unknown) => void }[] = [];
  private channelClosed = false;

  constructor(options: WorkerOptions) {
    super();
    if (typeof options.handler !== "function") {
      throw new TypeError("handler: a function is required");
    }
    if (!Array.isArray(options.kinds) || options.kinds.length === 0) {
      throw new TypeError("kinds: at least one task kind is required");
    }
    const maxConcurrency = options.maxConcurrency ?? 1;
    if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1 || maxConcurrency > 2 ** 32 - 1) {
      throw new RangeError(`maxConcurrency: expected a positive integer, got ${maxConcurrency}`);
    }
    this.name = options.name ?? `node-worker@${hostname()}`;
    this.kinds = [...options.kinds];
    this.maxConcurrency = maxConcurrency;
    this.handler = options.handler;
    this.closeGraceMs = options.closeGraceMs ?? 30_000;
    this.backoff = new Backoff(options.reconnect);
    this.traceFn = options.trace;
    const { target, credentials } = parseServer(options.server, options.credentials);
    this.stub = new (reinsV1().WorkerService)(target, credentials, options.channelOptions);
  }

  /** Ids of the tasks this worker runs now. */
  get activeTasks(): string[] {
    return [...(this.session?.tasks.keys() ?? [])];
  }

  /** Resolves with `workerId` once the server has welcomed a stream; rejects if `run()` ends first. */
  connected(): Promise<string> {
    if (this.session?.welcomed && this.workerId !== undefined) {
      return Promise.resolve(this.workerId);
    }
    return new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
  }

  /**
   * Connects, says `hello` and runs the tasks assigned until `close()`, reconnecting with
   * backoff when the stream ends. Resolves once closed; rejects with a ReinsError the
   * server answered that retrying cannot fix (e.g. INVALID_ARGUMENT for a built-in kind).
   */
  run(): Promise<void> {
    if (this.runDone !== undefined) {
      return Promise.reject(new Error("run() was called already"));
    }
    this.runDone = this.loop();
    return this.runDone;
  }

  private async loop(): Promise<void> {
    let failure: unknown;
    try {
      while (!this.closing.signal.aborted) {
        // Never more handlers at once than maxConcurrency, counting those still finishing
        // after a lost stream: connect with the capacity left.
        while (this.handlers.size >= this.maxConcurrency && !this.closing.signal.aborted) {
          await this.untilClosingOr(Promise.race(this.handlers.values()));
        }
        if (this.closing.signal.aborted) {
          break;
        }
        let session = this.connect(this.maxConcurrency - this.handlers.size);
        let error = await session.ended;
        await session.moved;
        // A move (reconnect) carried the worker on to another stream: follow it.
        while (session.movedTo !== undefined) {
          session = session.movedTo;
          error = await session.ended;
          await session.moved;
        }
        if (this.closing.signal.aborted) {
          break;
        }
        if (error !== undefined && FATAL.has(error.code)) {
          throw error;
        }
        if (session.welcomed) {
          this.backoff.reset();
        }
        const reconnectInMs = this.backoff.next();
        debug("stream ended (%s); reconnecting in %d ms", error?.message ?? "OK", reconnectInMs);
        this.emit("disconnect", { error, reconnectInMs });
        await this.pause(reconnectInMs);
      }
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      const waiters = this.connectWaiters;
      this.connectWaiters = [];
      for (const waiter of waiters) {
        waiter.reject(failure ?? new Error("the worker closed before it connected"));
      }
      if (failure !== undefined) {
        this.closeChannel();
      }
    }
  }

  /**
   * Stops taking tasks: no reconnect; running handlers get `graceMs` (default
   * `closeGraceMs`) to finish and report; then those left are aborted locally
   * (`ctx.aborted`, the server treats them as lost) and the stream is ended.
   *
   * The protocol has no "drain" message yet, so the server may still assign tasks while
   * the worker drains: they run within the same grace period rather than being dropped.
   */
  async close(options: { graceMs?: number } = {}): Promise<void> {
    const graceMs = options.graceMs ?? this.closeGraceMs;
    this.closing.abort();
    const deadline = Date.now() + graceMs;
    while (this.handlers.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        break;
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.race(this.handlers.values()),
        new Promise((resolve) => (timer = setTimeout(resolve, left))),
      ]);
      clearTimeout(timer);
    }
    for (const ctx of this.handlers.keys()) {
      ctx._abort("the worker is closing");
    }
    const session = this.session;
    if (session !== undefined && session.open) {
      session.halfClosed = true;
      session.call.end(); // half-close: the server forgets the worker and ends its side
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([
        session.ended.then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), END_GRACE_MS))),
      ]);
      clearTimeout(timer);
      if (!ended) {
        session.call.cancel();
        await session.ended;
      }
    }
    await this.runDone?.catch(() => undefined);
    this.closeChannel();
  }

  private closeChannel(): void {
    if (!this.channelClosed) {
      this.channelClosed = true;
      this.stub.close();
    }
  }

  /**
   * Waits `ms` or until close(). The timer is referenced, so a worker waiting to reconnect
   * keeps the process alive, and cleared on close, so it does not hold a closed worker's.
   */
  private pause(ms: number): Promise<void> {
    const signal = this.closing.signal;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      if (signal.aborted) done();
    });
  }

  private untilClosingOr(promise: Promise<unknown>): Promise<unknown> {
    const signal = this.closing.signal;
    if (signal.aborted) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener("abort", done);
        resolve(undefined);
      };
      signal.addEventListener("abort", done, { once: true });
      promise.then(done, done);
    });
  }

  /**
   * Opens a stream and says hello (listing `running`, the tasks a move brings along); the
   * session ends when the stream does. It is the worker's current one at once, or for a
   * move once welcomed.
   */
  private connect(capacity: number, running: { taskId: string; attempt: number }[] | undefined = undefined): Session {
    const call = this.stub.Connect();
    const session = new Session(call, this);
    if (running === undefined) {
      this.session = session;
    }
    call.on("data", (command: WorkerCommand__Output) => this.onCommand(session, command));
    call.on("error", () => {
      // The final status (below) says everything; without a listener 'error' would throw.
    });
    call.on("status", (status: grpc.StatusObject) => {
      if (this.session === session) {
        this.session = undefined;
      }
      session.end(status.code === grpc.status.OK ? undefined : toReinsError(status));
    });
    session.send({ hello: { name: this.name, kinds: [...this.kinds], maxConcurrency: capacity, running: running ?? [] } });
    return session;
  }

  /**
   * The replica of `from` drains: move to another one (the channel's load balancing picks
   * it; a refusal by the draining replica is retried). What the tasks send is held back
   * until the new stream is welcomed, then written there; the tasks it adopted run on (same
   * attempt), the others are aborted; `from` is half-closed. A progress message or
   * question written to `from` in the instant of the move may reach the old replica after
   * the adoption and is then dropped; outcomes never are (a task whose outcome was sent
   * does not move).
   */
  private move(from: Session, reason: string, attempt = 0): void {
    if (attempt === 0) {
      debug("the replica asks to reconnect (%s); moving", reason);
      from.beginMove();
    }
    const running = [...from.tasks.values()]
      .filter((ctx) => ctx.phase !== "finished" && ctx.phase !== "aborted")
      .map((ctx) => ({ taskId: ctx.task.id, attempt: ctx.task.attempt }));
    const to = this.connect(this.maxConcurrency, running);
    to.onWelcome = (adopted) => {
      const kept = new Set(adopted);
      for (const [taskId, ctx] of from.tasks) {
        if (kept.has(taskId)) {
          to.tasks.set(taskId, ctx);
        } else {
          ctx._abort("not adopted by the replica the worker moved to");
        }
      }
      from.tasks.clear();
      const held = from.held ?? [];
      from.held = undefined;
      from.movedTo = to;
      this.session = to;
      for (const message of held) {
        to.send(message);
      }
      from.halfClosed = true;
      if (from.open) {
        from.call.end();
      }
      from.moveSettled();
      debug("moved with %d task(s)", kept.size);
    };
    void to.ended.then(() => {
      if (to.welcomed) {
        return;
      }
      if (attempt < MOVE_ATTEMPTS && !this.closing.signal.aborted) {
        const delay = Math.min(100 * 2 ** attempt, 1000);
        setTimeout(() => this.move(from, reason, attempt + 1), delay);
        return;
      }
      this._warn("no replica took the worker; staying");
      const held = from.held ?? [];
      from.held = undefined;
      for (const message of held) {
        from.send(message);
      }
      from.moveSettled();
    });
  }

  private onCommand(session: Session, command: WorkerCommand__Output): void {
    this._trace("recv", command);
    switch (command.command) {
      case "welcome": {
        session.welcomed = true;
        session.onWelcome?.(command.welcome?.adopted ?? []);
        this.workerId = command.welcome?.workerId ?? "";
        this.heartbeatIntervalMs = fromDuration(command.welcome?.heartbeatInterval);
        debug("connected as %s", this.workerId);
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const waiter of waiters) {
          waiter.resolve(this.workerId);
        }
        this.emit("connect", this.workerId);
        return;
      }
      case "assign": {
        const record = command.assign?.task;
        if (record === null || record === undefined) {
          this._warn("an assignment without a task; ignored");
          return;
        }
        if (session.halfClosed) {
          // Crossed our half-close: the server settles it (requeued or FAILED) as it ends the stream.
          this._warn(`task ${record.id} was assigned while the worker closed; not run`);
          return;
        }
        if (session.tasks.has(record.id)) {
          this._warn(`task ${record.id} is assigned already; the second assignment is ignored`);
          return;
        }
        if (this.handlers.size >= this.maxConcurrency) {
          this._warn(`task ${record.id} assigned beyond maxConcurrency ${this.maxConcurrency}; running it anyway`);
        }
        const ctx = new TaskContext(fromTask(record), session, { ...(command.assign?.budgetRemaining ?? {}) });
        session.tasks.set(record.id, ctx);
        const running = this.runHandler(ctx).finally(() => {
          this.handlers.delete(ctx);
          // The task may have moved to another stream with the worker.
          for (const holder of [session, this.session]) {
            if (holder?.tasks.get(ctx.task.id) === ctx) {
              holder.tasks.delete(ctx.task.id);
            }
          }
        });
        this.handlers.set(ctx, running);
        return;
      }
      case "cancel": {
        const cancel = command.cancel;
        this.taskOf(session, cancel?.taskId)?._cancel(cancel?.reason ?? "", fromTimestamp(cancel?.graceDeadline));
        return;
      }
      case "abort": {
        const ctx = this.taskOf(session, command.abort?.taskId);
        if (ctx !== undefined) {
          session.tasks.delete(ctx.task.id); // its slot is free on the server already
          ctx._abort(command.abort?.reason ?? "");
        }
        return;
      }
      case "answer":
        this.taskOf(session, command.answer?.taskId)?._answer(command.answer?.answer ?? "", command.answer?.timedOut ?? false);
        return;
      case "usageAck":
        this.taskOf(session, command.usageAck?.taskId)?._usageAck({ ...(command.usageAck?.budgetRemaining ?? {}) });
        return;
      case "reconnect":
        if (session.movedTo === undefined && session.held === undefined && session.open) {
          this.move(session, command.reconnect?.reason ?? "");
        }
        return;
      default:
        this._warn(`an unknown command ${JSON.stringify(command.command ?? null)}; ignored`);
    }
  }

  private taskOf(session: Session, taskId: string | undefined): TaskContext | undefined {
    const ctx = taskId === undefined ? undefined : session.tasks.get(taskId);
    if (ctx === undefined) {
      this._warn(`a command about task ${taskId ?? "(none)"}, which this worker does not run; ignored`);
    }
    return ctx;
  }

  /** Runs the handler and sends its outcome; never rejects. */
  private async runHandler(ctx: TaskContext): Promise<void> {
    let outcome: Outcome;
    try {
      await Promise.resolve(); // let the stream's callback return before the handler starts
      const result = await this.handler(ctx);
      outcome = ctx.cancelRequested ? { type: "cancelAck", result } : { type: "complete", result };
    } catch (err) {
      if (ctx.aborted || err instanceof Aborted) {
        outcome = { type: "none" };
      } else if (err instanceof Cancelled) {
        outcome = { type: "cancelAck", result: err.result };
      } else if (err instanceof CancelRequested || (ctx.cancelRequested && isAbortError(err, ctx.signal))) {
        outcome = { type: "cancelAck", result: undefined };
      } else {
        debug("task %s failed: %o", ctx.task.id, err);
        outcome = { type: "fail", error: errorText(err) };
      }
    }
    ctx._finish(outcome);
  }

  /** @internal */
  _trace(direction: "send" | "recv", message: WorkerMessage | WorkerCommand__Output): void {
    if (this.traceFn === undefined) {
      return;
    }
    // Received commands carry their oneof case (`command`); messages built here do not.
    const type =
      ("command" in message ? message.command : undefined) ??
      Object.keys(message).find((key) => key !== "message" && key !== "command") ??
      "";
    const body = (message as Record<string, unknown>)[type] as { taskId?: string; task?: { id?: string } } | undefined;
    const taskId = body?.taskId ?? body?.task?.id ?? "";
    try {
      this.traceFn({ direction, type, taskId, message });
    } catch (err) {
      debug("trace callback failed: %o", err);
    }
  }

  /** @internal */
  _warn(message: string): void {
    debug("%s", message);
    this.emit("warning", message);
  }
}

/** An error that says "stopped because the signal was aborted" (fetch, timers, child_process). */
function isAbortError(err: unknown, signal: AbortSignal): boolean {
  return err === signal.reason || (err instanceof Error && err.name === "AbortError");
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    return err.message === "" ? err.name : err.message;
  }
  return String(err);
}
