// The TaskService client: start, run, check, cancel (one task or in bulk), list, watch and
// answer tasks.
import * as grpc from "@grpc/grpc-js";

import { parseServer, type ConnectionOptions } from "./address.js";
import { fromTask, fromTimestamp, toDuration, toStruct } from "./convert.js";
import { toReinsError } from "./errors.js";
import type { CancelResponse__Output } from "./gen/reins/v1/CancelResponse.js";
import type { CancelTasksResponse__Output } from "./gen/reins/v1/CancelTasksResponse.js";
import type { ListActiveResponse__Output } from "./gen/reins/v1/ListActiveResponse.js";
import type { Task__Output } from "./gen/reins/v1/Task.js";
import type { TaskEvent__Output } from "./gen/reins/v1/TaskEvent.js";
import type { TaskServiceClient } from "./gen/reins/v1/TaskService.js";
import { reinsV1 } from "./proto.js";
import { isTerminal, type CancelOutcome, type Task, type TaskEvent } from "./types.js";

/** Options every call takes. */
export interface CallOptions {
  /** Aborting cancels the call; it rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** The call's gRPC deadline, in milliseconds from now. */
  deadlineMs?: number;
}

export interface StartOptions extends CallOptions {
  /** Kind-specific parameters (a JSON object), validated by the server. */
  params?: Record<string, unknown>;
  description?: string;
  /** Cancelling the parent cancels this task too. */
  parentId?: string;
  /** A detached child keeps running when its parent finishes. */
  detached?: boolean;
  sessionId?: string;
  labels?: Record<string, string>;
  /** The task's maximum running time in milliseconds, counted from its start (`timeout`). */
  timeoutMs?: number;
  /** Idempotency key: a second start with the same key returns the first task. */
  requestId?: string;
  /** How many times the task may be started (a lost worker or replica requeues it). */
  maxAttempts?: number;
  /**
   * Limits per usage dimension over the task's whole subtree, e.g.
   * `{ output_tokens: 10000, cost_usd: 0.5 }`: the server soft-cancels the subtree once it
   * has spent one of them.
   */
  budget?: Record<string, number>;
}

export interface RunOptions extends StartOptions {
  /** Let the task run on when this call ends early (by default that soft-cancels it). */
  continueOnDisconnect?: boolean;
}

export interface CancelTasksOptions extends CallOptions {
  /** Filters (at least one); every one given must match. */
  kind?: string;
  sessionId?: string;
  parentId?: string;
  labels?: Record<string, string>;
  /** Hard-cancel instead of asking the tasks to stop at their next checkpoint. */
  hard?: boolean;
  reason?: string;
  /** Soft only: how long each task may take to stop; unset: the server's default. */
  graceMs?: number;
  /** Only count (and list) what would be cancelled. */
  dryRun?: boolean;
}

export interface CancelTasksResult {
  /** Active tasks matching when the call started. */
  matched: number;
  cancelled: number;
  /** Asked to stop (soft-cancelled while running). */
  requested: number;
  alreadyFinished: number;
  /** The first 1000 matched ids, in creation order. */
  taskIds: string[];
  /** More than 1000 matched. */
  truncated: boolean;
}

export interface SoftCancelOptions extends CallOptions {
  reason?: string;
  /** How long the task may take to stop before it is hard-cancelled; unset: the server's default. */
  graceMs?: number;
}

export interface HardCancelOptions extends CallOptions {
  reason?: string;
}

export interface CancelResult {
  task: Task;
  outcome: CancelOutcome;
}

export interface ListOptions extends CallOptions {
  kind?: string;
  sessionId?: string;
  parentId?: string;
  /** Every label given must match. */
  labels?: Record<string, string>;
  /** Default 100, at most 1000. */
  pageSize?: number;
  /** `nextPageToken` of the previous page. */
  pageToken?: string;
}

export interface TaskPage {
  tasks: Task[];
  /** Empty on the last page. */
  nextPageToken: string;
}

export interface WatchOptions {
  /** Soft-cancel the task ("watcher disconnected") if the watch ends before the task does. */
  cancelOnDisconnect?: boolean;
  /** Resume: replay the changes after this version, then continue live. */
  afterVersion?: number;
  /** Aborting ends the watch: the iterator throws `signal.reason`. */
  signal?: AbortSignal;
}

export interface ClientOptions extends ConnectionOptions {}

type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void;

/**
 * A TaskService client on one gRPC channel. Every method returns plain data (`Task`) and
 * rejects with a `ReinsError` (or the `signal`'s reason when aborted).
 *
 * ```ts
 * const client = new Client("127.0.0.1:50051");
 * const task = await client.start("research", { params: { topic: "rust" } });
 * for await (const { task: t } of client.watch(task.id)) console.log(t.version, t.state);
 * ```
 */
export class Client {
  /** The generated service client: one channel, shared by every call. */
  private readonly stub: TaskServiceClient;

  constructor(server: string | ClientOptions) {
    const options: ClientOptions = typeof server === "string" ? { server } : server;
    const { target, credentials } = parseServer(options.server, options.credentials);
    this.stub = new (reinsV1().TaskService)(target, credentials, options.channelOptions);
  }

  /** Starts a task (RUNNING, or PENDING while no capacity or worker is free). */
  async start(kind: string, options: StartOptions = {}): Promise<Task> {
    const request = startRequest(kind, options);
    return this.unary<Task__Output>(options, (o, cb) => this.stub.StartTask(request, o, cb)).then(fromTask);
  }

  /**
   * Starts a task and streams it like `watch` until its terminal event (RunTask). Leaving
   * the loop early (or losing the connection) soft-cancels the task ("caller
   * disconnected") unless `continueOnDisconnect`; with a `requestId` a second `run`
   * re-attaches, and the task is cancelled only when the last of them leaves.
   */
  run(kind: string, options: RunOptions = {}): AsyncGenerator<TaskEvent, void, undefined> {
    const call = this.stub.RunTask({
      task: startRequest(kind, options),
      continueOnDisconnect: options.continueOnDisconnect ?? false,
    });
    return iterateWatch(call, options.signal);
  }

  /**
   * Cancels every active task matching the filters (at least one), each with its subtree
   * (CancelTasks); `dryRun` only counts. By `sessionId` alone, the session also refuses
   * new tasks for a while (`SESSION_CANCELLED`).
   */
  async cancelTasks(options: CancelTasksOptions): Promise<CancelTasksResult> {
    const request = {
      kind: options.kind ?? "",
      sessionId: options.sessionId ?? "",
      parentId: options.parentId ?? "",
      labels: options.labels ?? {},
      mode: options.hard === true ? ("CANCEL_MODE_HARD" as const) : ("CANCEL_MODE_SOFT" as const),
      reason: options.reason ?? "",
      gracePeriod: options.graceMs === undefined ? null : toDuration(options.graceMs, "graceMs"),
      dryRun: options.dryRun ?? false,
    };
    const response = await this.unary<CancelTasksResponse__Output>(options, (o, cb) =>
      this.stub.CancelTasks(request, o, cb),
    );
    return {
      matched: response.matched,
      cancelled: response.cancelled,
      requested: response.requested,
      alreadyFinished: response.alreadyFinished,
      taskIds: [...response.taskIds],
      truncated: response.truncated,
    };
  }

  /** Reads a task, active or finished. */
  async check(taskId: string, options: CallOptions = {}): Promise<Task> {
    return this.unary<Task__Output>(options, (o, cb) => this.stub.CheckTask({ taskId }, o, cb)).then(fromTask);
  }

  /** Asks the task (and its subtree) to stop at its next checkpoint. */
  async softCancel(taskId: string, options: SoftCancelOptions = {}): Promise<CancelResult> {
    const request = {
      taskId,
      reason: options.reason ?? "",
      gracePeriod: options.graceMs === undefined ? null : toDuration(options.graceMs, "graceMs"),
    };
    return this.unary<CancelResponse__Output>(options, (o, cb) => this.stub.SoftCancel(request, o, cb)).then(fromCancelResponse);
  }

  /** Ends the task (and its subtree) now: CANCELLED when the call returns. */
  async hardCancel(taskId: string, options: HardCancelOptions = {}): Promise<CancelResult> {
    const request = { taskId, reason: options.reason ?? "" };
    return this.unary<CancelResponse__Output>(options, (o, cb) => this.stub.HardCancel(request, o, cb)).then(fromCancelResponse);
  }

  // cancelTasks (CancelTasks) and run (RunTask) slot in here once the server has them:
  // each is one `unary` call (or, for a streaming RunTask, an iterator like `watch`).

  /** One page of active tasks, in creation order. */
  async list(options: ListOptions = {}): Promise<TaskPage> {
    const request = {
      kind: options.kind ?? "",
      sessionId: options.sessionId ?? "",
      parentId: options.parentId ?? "",
      labels: options.labels ?? {},
      pageSize: options.pageSize ?? 0,
      pageToken: options.pageToken ?? "",
    };
    const page = await this.unary<ListActiveResponse__Output>(options, (o, cb) => this.stub.ListActive(request, o, cb));
    return { tasks: page.tasks.map(fromTask), nextPageToken: page.nextPageToken };
  }

  /** Every active task matching the filter, page after page. */
  async *listAll(options: Omit<ListOptions, "pageToken"> = {}): AsyncGenerator<Task, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.list({ ...options, pageToken });
      yield* page.tasks;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * The task as it is now, then every change in version order; the iterator ends after
   * the terminal event. Leaving the loop early (`break`, `return`, a throw) cancels the
   * call. A broken stream throws a ReinsError (watch again with `afterVersion` to resume).
   */
  watch(taskId: string, options: WatchOptions = {}): AsyncGenerator<TaskEvent, void, undefined> {
    const afterVersion = options.afterVersion ?? 0;
    if (!Number.isSafeInteger(afterVersion) || afterVersion < 0) {
      throw new RangeError(`afterVersion: expected a non-negative integer, got ${afterVersion}`);
    }
    const call = this.stub.WatchTask({
      taskId,
      cancelOnDisconnect: options.cancelOnDisconnect ?? false,
      afterVersion: String(afterVersion),
    });
    return iterateWatch(call, options.signal);
  }

  /** Answers the question of a task waiting for an answer and resumes it. */
  async answer(taskId: string, answer: string, options: CallOptions = {}): Promise<Task> {
    return this.unary<Task__Output>(options, (o, cb) => this.stub.AnswerTask({ taskId, answer }, o, cb)).then(fromTask);
  }

  /** Closes the channel; calls in flight fail. */
  close(): void {
    this.stub.close();
  }

  /** Runs one unary call: deadline, cancellation by `signal`, errors as ReinsError. */
  private unary<T>(options: CallOptions, invoke: (o: grpc.CallOptions, cb: Callback<T>) => grpc.ClientUnaryCall): Promise<T> {
    const { signal, deadlineMs } = options;
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const callOptions: grpc.CallOptions = deadlineMs === undefined ? {} : { deadline: Date.now() + deadlineMs };
      const onAbort = () => call.cancel();
      const call = invoke(callOptions, (err, value) => {
        signal?.removeEventListener("abort", onAbort);
        if (signal?.aborted) {
          reject(signal.reason);
        } else if (err !== null || value === undefined) {
          reject(toReinsError(err ?? new Error("the server sent no response")));
        } else {
          resolve(value);
        }
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/** The one place a StartTaskRequest is built (start and run). */
function startRequest(kind: string, options: StartOptions) {
  return {
    kind,
    description: options.description ?? "",
    params: options.params === undefined ? null : toStruct(options.params),
    parentId: options.parentId ?? "",
    detached: options.detached ?? false,
    sessionId: options.sessionId ?? "",
    labels: options.labels ?? {},
    timeout: options.timeoutMs === undefined ? null : toDuration(options.timeoutMs, "timeoutMs"),
    requestId: options.requestId ?? "",
    maxAttempts: options.maxAttempts ?? 0,
    budget: options.budget ?? {},
  };
}

function fromCancelResponse(response: CancelResponse__Output): CancelResult {
  if (response.task === null || response.task === undefined) {
    throw toReinsError(new Error("the server's cancel response has no task"));
  }
  return {
    task: fromTask(response.task),
    outcome: response.outcome.replace(/^CANCEL_OUTCOME_/, "") as CancelOutcome,
  };
}

async function* iterateWatch(
  call: grpc.ClientReadableStream<TaskEvent__Output>,
  signal: AbortSignal | undefined,
): AsyncGenerator<TaskEvent, void, undefined> {
  const onAbort = () => call.cancel();
  signal?.addEventListener("abort", onAbort, { once: true });
  let ended = false;
  try {
    signal?.throwIfAborted();
    for await (const raw of call as AsyncIterable<TaskEvent__Output>) {
      // Heartbeats only keep a quiet stream alive through proxies: not a new version.
      if (raw.task === null || raw.task === undefined || raw.heartbeat) {
        continue;
      }
      const event: TaskEvent = { task: fromTask(raw.task), time: fromTimestamp(raw.time) };
      if (isTerminal(event.task.state)) {
        ended = true; // the server closes the stream right after this event
        yield event;
        return;
      }
      yield event;
    }
    ended = true;
  } catch (err) {
    if (signal?.aborted) {
      throw signal.reason;
    }
    throw toReinsError(err);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!ended) {
      call.cancel(); // the consumer left early (or the call failed: a no-op then)
    }
  }
}
