// What a handler sees of its task (TaskContext) and the errors that end a task on request.
import { toDuration, toValue } from "./convert.js";
import type { WorkerMessage } from "./gen/reins/v1/WorkerMessage.js";
import type { JsonObject, Task } from "./types.js";

/**
 * Throw from a handler to stop after a soft cancel, with `result` (what was done): the
 * worker sends `cancel_ack`, the task ends CANCELLED and keeps its partial results.
 * Thrown without a cancel having been requested, the server records the task FAILED.
 */
export class Cancelled extends Error {
  override readonly name: string = "Cancelled";
  constructor(readonly result?: unknown) {
    super("the task stopped on request");
  }
}

/**
 * A soft cancel was requested: thrown by `ctx.ask()` and `ctx.throwIfCancelled()`. A
 * handler that lets it propagate stops the task with `cancel_ack` and no result.
 */
export class CancelRequested extends Error {
  override readonly name: string = "CancelRequested";
  constructor(readonly reason: string) {
    super(reason === "" ? "a cancel was requested" : `a cancel was requested: ${reason}`);
  }
}

/**
 * The task was hard-cancelled (`abort`) or the worker lost its stream: it is over on the
 * server already and nothing the handler sends about it counts. Thrown by `ctx.ask()` and
 * `ctx.throwIfCancelled()` once `ctx.aborted`.
 */
export class Aborted extends CancelRequested {
  override readonly name: string = "Aborted";
}

/** The task a handler runs, as assigned (a snapshot: the server's record moves on). */
export interface TaskInfo {
  id: string;
  kind: string;
  description: string;
  /** `StartTaskRequest.params` as plain JSON. */
  params: JsonObject;
  labels: Record<string, string>;
  sessionId: string;
  parentId: string;
  /** How many times the task has been started: 1 on the first run. */
  attempt: number;
  maxAttempts: number;
  /** The whole record as assigned. */
  record: Task;
  /**
   * What is left to spend, per dimension: the tightest remaining amount over the budgets
   * of the task and its ancestors, as of the assignment or the last acknowledged usage
   * report (`{}`: no budget applies). Shrink a model's `max_tokens` to it.
   */
  budgetRemaining: Record<string, number>;
}

/** The question asked with `answerWithinMs` was not answered in time: the task runs on. */
export class AnswerTimedOut extends Error {
  constructor(readonly question: string) {
    super(`nobody answered ${JSON.stringify(question.slice(0, 80))} in time`);
    this.name = "AnswerTimedOut";
  }
}

/** Where a context sends its reports: the stream its task was assigned on. */
export interface Outbox {
  send(message: WorkerMessage): void;
  warn(message: string): void;
}

/** How a handler ended, as the worker reports it. */
export type Outcome =
  | { type: "complete"; result: unknown }
  | { type: "cancelAck"; result: unknown }
  | { type: "fail"; error: string }
  | { type: "none" };

/** Usage increments: finite and non-negative (the server ends the stream otherwise). */
function checkedUsage(usage: Record<string, number> | undefined): Record<string, number> {
  for (const [dimension, amount] of Object.entries(usage ?? {})) {
    if (!Number.isFinite(amount) || amount < 0) {
      throw new RangeError(`usage.${dimension}: expected a finite number >= 0, got ${amount}`);
    }
  }
  return usage ?? {};
}

function checkFraction(fraction: number): void {
  if (!Number.isFinite(fraction) || fraction < 0 || fraction > 1) {
    throw new RangeError(`fraction: expected a number from 0 to 1, got ${fraction}`);
  }
}

interface OpenQuestion {
  text: string;
  resolve: (answer: string) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * One running task, as its handler sees it.
 *
 * The phases of a task on this worker: `running` → `cancel-requested` (a soft cancel came:
 * `signal` is aborted with the cancel's reason; stop at the next checkpoint) → `finished`
 * (the outcome was sent), or → `aborted` from either (a hard cancel, or the stream was
 * lost: stop now; nothing more is sent about the task).
 */
export class TaskContext {
  readonly task: TaskInfo;
  /**
   * Aborted on a soft cancel (its `reason` is the cancel's reason) and on an abort (its
   * reason then is the abort's, unless a soft cancel came first). Hand it to fetch, timers
   * and child processes; `aborted` tells a hard abort from a soft cancel.
   */
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private cancel: { reason: string; graceDeadline: Date | undefined } | undefined;
  private abortedWith: string | undefined;
  private finished = false;
  private question: OpenQuestion | undefined;
  private lastFraction = 0;

  constructor(
    record: Task,
    private readonly outbox: Outbox,
    budgetRemaining: Record<string, number> = {},
  ) {
    this.task = {
      budgetRemaining,
      id: record.id,
      kind: record.kind,
      description: record.description,
      params: record.params,
      labels: record.labels,
      sessionId: record.sessionId,
      parentId: record.parentId,
      attempt: record.attempt,
      maxAttempts: record.maxAttempts,
      record,
    };
    this.signal = this.controller.signal;
  }

  /** `running`, `cancel-requested`, `aborted` or `finished`. */
  get phase(): "running" | "cancel-requested" | "aborted" | "finished" {
    if (this.abortedWith !== undefined) return "aborted";
    if (this.finished) return "finished";
    return this.cancel !== undefined ? "cancel-requested" : "running";
  }

  /** True once the task was hard-cancelled (`abort`) or the worker lost its stream. */
  get aborted(): boolean {
    return this.abortedWith !== undefined;
  }

  /** True once a soft cancel or an abort arrived (`signal.aborted`). */
  get cancelRequested(): boolean {
    return this.signal.aborted;
  }

  /** The soft cancel's reason (or the abort's, without one); `""` before either. */
  get cancelReason(): string {
    return this.cancel?.reason ?? this.abortedWith ?? "";
  }

  /** Why the task was aborted; `""` if it was not. */
  get abortReason(): string {
    return this.abortedWith ?? "";
  }

  /** When the server aborts the task if it has not stopped after a soft cancel. */
  get graceDeadline(): Date | undefined {
    return this.cancel?.graceDeadline;
  }

  /** Throws `Aborted` after an abort, `CancelRequested` after a soft cancel. */
  throwIfCancelled(): void {
    if (this.abortedWith !== undefined) {
      throw new Aborted(this.abortedWith);
    }
    if (this.cancel !== undefined) {
      throw new CancelRequested(this.cancel.reason);
    }
  }

  /**
   * Reports progress: `fraction` from 0 to 1 and a short message; `usage`: what was spent
   * since the last report (e.g. `{ output_tokens: 120 }`), counted against the budgets of
   * the task and its ancestors. The server soft-cancels the task when a budget is
   * exhausted; `task.budgetRemaining` follows each report.
   */
  progress(fraction: number, message = "", options: { usage?: Record<string, number> } = {}): void {
    checkFraction(fraction);
    this.lastFraction = fraction;
    this.send({ progress: { taskId: this.task.id, fraction, message, usage: checkedUsage(options.usage) } });
  }

  /**
   * Reports a partial result (appended to `Task.partialResults`, kept even if the task is
   * cancelled later) with progress (`fraction` defaults to the last one reported).
   * Returns `cancelRequested`: a checkpoint is where a task honours a soft cancel —
   * `if (ctx.checkpoint(part)) throw new Cancelled(done)`. TypeError if `partial` is not JSON.
   */
  checkpoint(
    partial: unknown,
    fraction: number = this.lastFraction,
    message = "",
    options: { usage?: Record<string, number> } = {},
  ): boolean {
    checkFraction(fraction);
    const partialResult = toValue(partial);
    this.lastFraction = fraction;
    const usage = checkedUsage(options.usage);
    this.send({ progress: { taskId: this.task.id, fraction, message, partialResult, usage } });
    return this.cancelRequested;
  }

  /**
   * Asks a question and resolves with the answer (AnswerTask, through any replica); the
   * task is WAITING_FOR_ANSWER meanwhile. Rejects with `CancelRequested` when a soft cancel
   * comes first (or had come), `Aborted` on an abort, and an Error after `timeoutMs` (the
   * question stays open on the server). With `answerWithinMs` the server resumes the task
   * unanswered after that long: `AnswerTimedOut`. One question at a time.
   */
  ask(question: string, options: { timeoutMs?: number; answerWithinMs?: number } = {}): Promise<string> {
    try {
      this.throwIfCancelled();
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.question !== undefined) {
      return Promise.reject(new Error("a question is open already: one at a time"));
    }
    return new Promise<string>((resolve, reject) => {
      const open: OpenQuestion = { text: question, resolve, reject, timer: undefined };
      if (options.timeoutMs !== undefined) {
        open.timer = setTimeout(() => {
          if (this.question === open) {
            this.question = undefined;
            reject(new Error(`no answer to ${JSON.stringify(question.slice(0, 80))} within ${options.timeoutMs} ms`));
          }
        }, options.timeoutMs);
      }
      this.question = open;
      const timeout =
        options.answerWithinMs === undefined ? null : toDuration(options.answerWithinMs, "answerWithinMs");
      this.send({ ask: { taskId: this.task.id, question, timeout } });
    });
  }

  // -- driven by the worker ---------------------------------------------------------------

  private send(message: WorkerMessage): void {
    if (this.abortedWith === undefined && !this.finished) {
      this.outbox.send(message);
    }
  }

  private settleQuestion(err: Error): void {
    const open = this.question;
    this.question = undefined;
    if (open !== undefined) {
      clearTimeout(open.timer);
      open.reject(err);
    }
  }

  /** @internal A soft cancel (`cancel`) arrived. */
  _cancel(reason: string, graceDeadline: Date | undefined): void {
    if (this.abortedWith !== undefined || this.finished) {
      return;
    }
    if (this.cancel === undefined) {
      this.cancel = { reason, graceDeadline };
      this.controller.abort(reason);
    } else {
      this.cancel.graceDeadline = graceDeadline ?? this.cancel.graceDeadline; // a shorter grace
    }
    this.settleQuestion(new CancelRequested(reason));
  }

  /** @internal The task is over on the server (`abort`, the stream ended, the worker closed). */
  _abort(reason: string): void {
    if (this.abortedWith !== undefined || this.finished) {
      return;
    }
    this.abortedWith = reason;
    if (!this.signal.aborted) {
      this.controller.abort(reason);
    }
    this.settleQuestion(new Aborted(reason));
  }

  /** @internal The answer to the open question (or its timeout on the server). */
  _answer(answer: string, timedOut = false): void {
    const open = this.question;
    if (open === undefined) {
      this.outbox.warn(`task ${this.task.id}: an answer nobody asked for; ignored`);
      return;
    }
    this.question = undefined;
    clearTimeout(open.timer);
    if (timedOut) {
      open.reject(new AnswerTimedOut(open.text));
    } else {
      open.resolve(answer);
    }
  }

  /** @internal A usage report was recorded: what is left of the budgets now. */
  _usageAck(budgetRemaining: Record<string, number>): void {
    this.task.budgetRemaining = budgetRemaining;
  }

  /** @internal Sends the handler's outcome, once; nothing after an abort. */
  _finish(outcome: Outcome): void {
    if (this.abortedWith !== undefined || this.finished || outcome.type === "none") {
      this.finished = true;
      return;
    }
    const taskId = this.task.id;
    let message: WorkerMessage;
    if (outcome.type === "fail") {
      message = { fail: { taskId, error: outcome.error } };
    } else {
      try {
        const result = outcome.result === undefined ? null : toValue(outcome.result);
        message = outcome.type === "complete" ? { complete: { taskId, result } } : { cancelAck: { taskId, result } };
      } catch (err) {
        message = { fail: { taskId, error: `the handler's result is ${(err as Error).message}` } };
      }
    }
    this.send(message);
    this.finished = true;
    this.settleQuestion(new Error("the task has ended"));
  }
}
