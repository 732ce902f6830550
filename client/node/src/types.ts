// The package's plain types: what a Task looks like to a Node program.

/** A JSON value: what params, results and partial results are. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** reins.v1.TaskState without its `TASK_STATE_` prefix. */
export type TaskState =
  | "UNSPECIFIED"
  | "PENDING"
  | "RUNNING"
  | "WAITING_FOR_ANSWER"
  | "COMPLETED"
  | "FAILED"
  | "CANCELLED";

/** reins.v1.CancelMode without its prefix. */
export type CancelMode = "UNSPECIFIED" | "SOFT" | "HARD";

/** reins.v1.CancelOutcome without its prefix. */
export type CancelOutcome = "UNSPECIFIED" | "CANCELLED" | "REQUESTED" | "ALREADY_CANCELLED" | "ALREADY_FINISHED";

const TERMINAL: ReadonlySet<TaskState> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** COMPLETED, FAILED and CANCELLED are final. */
export function isTerminal(state: TaskState): boolean {
  return TERMINAL.has(state);
}

export interface Progress {
  /** 0.0 to 1.0. */
  fraction: number;
  message: string;
}

export interface CancelInfo {
  mode: CancelMode;
  reason: string;
  requestedAt: Date | undefined;
  /** When a soft cancel escalates to hard if the task has not stopped. */
  graceDeadline: Date | undefined;
  /** The server hard-cancelled the task because the grace period ran out. */
  escalated: boolean;
  /** The cancel came from the task's own timeout (the task ends FAILED). */
  deadlineExceeded: boolean;
  /** The server cancelled the task: its subtree reached this dimension's budget limit. */
  budgetExhausted: string;
}

/** A task record (reins.v1.Task) as plain data; empty strings where the proto has none. */
export interface Task {
  /** UUIDv7. */
  id: string;
  kind: string;
  description: string;
  state: TaskState;
  params: JsonObject;
  parentId: string;
  detached: boolean;
  sessionId: string;
  labels: Record<string, string>;
  /** The replica that runs (or ran) the task; empty while PENDING. */
  owner: string;
  createdAt: Date | undefined;
  startedAt: Date | undefined;
  finishedAt: Date | undefined;
  progress: Progress | undefined;
  /** Checkpoints, in the order the task reported them. */
  partialResults: Json[];
  /** Unset (undefined) until the task ends with a result. */
  result: Json | undefined;
  error: string;
  /** The open question while WAITING_FOR_ANSWER. */
  question: string;
  /** Set once a cancel (or a timeout) has been requested. */
  cancel: CancelInfo | undefined;
  /** Bumped by one on every change. */
  version: number;
  timeoutMs: number | undefined;
  requestId: string;
  /** The last answer given to the task. */
  answer: string;
  /** How many times the task has been started. */
  attempt: number;
  maxAttempts: number;
  /** `<name>/<worker_id>` of the worker running it; empty for built-in kinds. */
  worker: string;
  /** Limits per usage dimension over the task's subtree (`StartOptions.budget`). */
  budget: Record<string, number>;
  /** What the task itself reported spending. */
  usage: Record<string, number>;
  /** What the task and all its descendants reported spending (read fresh by `check`). */
  subtreeUsage: Record<string, number>;
  /** The last question was not answered in time: the task resumed without an answer. */
  answerTimedOut: boolean;
}

/** One WatchTask message: the task after a change. */
export interface TaskEvent {
  task: Task;
  time: Date | undefined;
}
