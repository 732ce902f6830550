// @reins/sdk: a TaskService client and a WorkerService worker for Node 20+.
export { Client } from "./client.js";
export type {
  CallOptions,
  CancelResult,
  CancelTasksOptions,
  CancelTasksResult,
  ClientOptions,
  HardCancelOptions,
  ListOptions,
  RunOptions,
  SoftCancelOptions,
  StartOptions,
  TaskPage,
  WatchOptions,
} from "./client.js";
export { Worker } from "./worker.js";
export type { Handler, TraceEntry, WorkerEvents, WorkerOptions } from "./worker.js";
export { Aborted, AnswerTimedOut, CancelRequested, Cancelled, TaskContext } from "./context.js";
export type { TaskInfo } from "./context.js";
export { ReinsError } from "./errors.js";
export type { FieldViolation, StatusName } from "./errors.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export type { ConnectionOptions } from "./address.js";
export { isTerminal } from "./types.js";
export type { CancelInfo, CancelMode, CancelOutcome, Json, JsonObject, Progress, Task, TaskEvent, TaskState } from "./types.js";
