// Conversions between the loader's proto objects and the package's plain types: JSON
// values ⇄ google.protobuf.Value/Struct, Timestamp → Date, milliseconds ⇄ Duration,
// and reins.v1.Task → Task.
import type { Duration, Duration__Output } from "./gen/google/protobuf/Duration.js";
import type { ListValue__Output } from "./gen/google/protobuf/ListValue.js";
import type { Struct, Struct__Output } from "./gen/google/protobuf/Struct.js";
import type { Timestamp__Output } from "./gen/google/protobuf/Timestamp.js";
import type { Value, Value__Output } from "./gen/google/protobuf/Value.js";
import type { CancelInfo__Output } from "./gen/reins/v1/CancelInfo.js";
import type { Task__Output } from "./gen/reins/v1/Task.js";
import type { CancelInfo, CancelMode, Json, JsonObject, Task, TaskState } from "./types.js";

/** `value` as a google.protobuf.Value; TypeError for anything JSON cannot carry. */
export function toValue(value: unknown): Value {
  return convert(value, "", new Set());
}

/** A plain object as a google.protobuf.Struct (the `params` of a task). */
export function toStruct(object: Record<string, unknown>): Struct {
  const value = convert(object, "", new Set());
  if (value.structValue === undefined || value.structValue === null) {
    throw new TypeError("expected a plain object");
  }
  return value.structValue;
}

function convert(value: unknown, path: string, seen: Set<object>): Value {
  const at = () => (path === "" ? "" : ` at ${path}`);
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON: () => unknown }).toJSON(); // Dates, as JSON.stringify does
  }
  switch (typeof value) {
    case "string":
      return { stringValue: value };
    case "boolean":
      return { boolValue: value };
    case "number":
      if (!Number.isFinite(value)) {
        throw new TypeError(`not JSON: ${value}${at()} (numbers must be finite)`);
      }
      return { numberValue: value };
    case "object": {
      if (value === null) {
        return { nullValue: "NULL_VALUE" };
      }
      if (seen.has(value)) {
        throw new TypeError(`not JSON: a cycle${at()}`);
      }
      seen.add(value);
      try {
        if (Array.isArray(value)) {
          // As JSON.stringify: holes and undefined in arrays become null.
          const values = Array.from(value, (item, i) =>
            item === undefined ? { nullValue: "NULL_VALUE" as const } : convert(item, `${path}[${i}]`, seen),
          );
          return { listValue: { values } };
        }
        const fields: Record<string, Value> = {};
        for (const [key, item] of Object.entries(value)) {
          if (item !== undefined) {
            fields[key] = convert(item, path === "" ? key : `${path}.${key}`, seen);
          }
        }
        return { structValue: { fields } };
      } finally {
        seen.delete(value);
      }
    }
    default:
      throw new TypeError(`not JSON: a ${typeof value}${at()}`);
  }
}

const VALUE_CASES = ["nullValue", "numberValue", "stringValue", "boolValue", "structValue", "listValue"] as const;

/** A google.protobuf.Value as plain JSON. */
export function fromValue(value: Value__Output | null | undefined): Json {
  if (value === null || value === undefined) {
    return null;
  }
  // Decoded messages name their case in `kind` (the loader's `oneofs` option).
  const kind = value.kind ?? VALUE_CASES.find((name) => value[name] !== undefined && value[name] !== null);
  switch (kind) {
    case "numberValue":
      return value.numberValue ?? 0;
    case "stringValue":
      return value.stringValue ?? "";
    case "boolValue":
      return value.boolValue ?? false;
    case "structValue":
      return fromStruct(value.structValue);
    case "listValue":
      return fromList(value.listValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct as a plain object (`{}` when unset). */
export function fromStruct(struct: Struct__Output | null | undefined): JsonObject {
  const out: JsonObject = {};
  for (const [key, item] of Object.entries(struct?.fields ?? {})) {
    out[key] = fromValue(item);
  }
  return out;
}

function fromList(list: ListValue__Output | null | undefined): Json[] {
  return (list?.values ?? []).map(fromValue);
}

/** A Timestamp as a Date (millisecond precision), or undefined when unset. */
export function fromTimestamp(ts: Timestamp__Output | null | undefined): Date | undefined {
  if (ts === null || ts === undefined) {
    return undefined;
  }
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
}

/** Milliseconds as a Duration; RangeError for a negative or non-finite value. */
export function toDuration(ms: number, what: string): Duration {
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`${what}: expected a non-negative number of milliseconds, got ${ms}`);
  }
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

export function fromDuration(d: Duration__Output | null | undefined): number | undefined {
  if (d === null || d === undefined) {
    return undefined;
  }
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

function strip<T extends string>(value: string, prefix: string): T {
  return (value.startsWith(prefix) ? value.slice(prefix.length) : value) as T;
}

export function fromState(state: string): TaskState {
  return strip<TaskState>(state, "TASK_STATE_");
}

function fromCancel(cancel: CancelInfo__Output | null | undefined): CancelInfo | undefined {
  if (cancel === null || cancel === undefined) {
    return undefined;
  }
  return {
    mode: strip<CancelMode>(cancel.mode, "CANCEL_MODE_"),
    reason: cancel.reason,
    requestedAt: fromTimestamp(cancel.requestedAt),
    graceDeadline: fromTimestamp(cancel.graceDeadline),
    escalated: cancel.escalated,
    deadlineExceeded: cancel.deadlineExceeded,
    budgetExhausted: cancel.budgetExhausted,
  };
}

/** A reins.v1.Task as received, as the package's plain Task. */
export function fromTask(task: Task__Output): Task {
  return {
    id: task.id,
    kind: task.kind,
    description: task.description,
    state: fromState(task.state),
    params: fromStruct(task.params),
    parentId: task.parentId,
    detached: task.detached,
    sessionId: task.sessionId,
    labels: { ...task.labels },
    owner: task.owner,
    createdAt: fromTimestamp(task.createdAt),
    startedAt: fromTimestamp(task.startedAt),
    finishedAt: fromTimestamp(task.finishedAt),
    progress: task.progress ? { fraction: task.progress.fraction, message: task.progress.message } : undefined,
    partialResults: task.partialResults.map(fromValue),
    result: task.result === null || task.result === undefined ? undefined : fromValue(task.result),
    error: task.error,
    question: task.question,
    cancel: fromCancel(task.cancel),
    version: Number(task.version),
    timeoutMs: fromDuration(task.timeout),
    requestId: task.requestId,
    answer: task.answer,
    attempt: task.attempt,
    maxAttempts: task.maxAttempts,
    worker: task.worker,
    budget: { ...task.budget },
    usage: { ...task.usage },
    subtreeUsage: { ...task.subtreeUsage },
    answerTimedOut: task.answerTimedOut,
  };
}
