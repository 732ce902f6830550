// One error class for every failed call, carrying the gRPC code and the google.rpc
// details the server attaches (`grpc-status-details-bin`: a google.rpc.Status whose
// `details` are Any-wrapped ErrorInfo and BadRequest messages).
import * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs";

/** The shapes of google/rpc/status.proto and error_details.proto this package decodes. */
const RPC_DESCRIPTOR = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: "int32", id: 1 },
                message: { type: "string", id: 2 },
                details: { rule: "repeated", type: "google.protobuf.Any", id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: "string", id: 1 },
                domain: { type: "string", id: 2 },
                metadata: { keyType: "string", type: "string", id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: "repeated", type: "FieldViolation", id: 1 } },
              nested: {
                FieldViolation: {
                  fields: {
                    field: { type: "string", id: 1 },
                    description: { type: "string", id: 2 },
                    reason: { type: "string", id: 3 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

const root = protobuf.Root.fromJSON(RPC_DESCRIPTOR);
const StatusType = root.lookupType("google.rpc.Status");
const ErrorInfoType = root.lookupType("google.rpc.ErrorInfo");
const BadRequestType = root.lookupType("google.rpc.BadRequest");
const ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST_URL = "type.googleapis.com/google.rpc.BadRequest";

/** A field a request got wrong (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  /** e.g. `params.steps`. */
  field: string;
  description: string;
}

/** The gRPC code's name: `grpc.status[code]`, e.g. `"NOT_FOUND"`. */
export type StatusName = keyof typeof grpc.status;

/**
 * A call to Reins failed. `code` is the gRPC status code (`grpc.status.NOT_FOUND`, …),
 * `reason` the google.rpc ErrorInfo reason clients branch on (`TASK_NOT_FOUND`,
 * `KIND_UNKNOWN`, `TASK_NOT_WAITING`, `INVALID_ARGUMENT`, …; empty when the server sent
 * none, e.g. for a connection failure).
 */
export class ReinsError extends Error {
  override readonly name = "ReinsError";
  /** The gRPC status code. */
  readonly code: grpc.status;
  /** The code's name, e.g. `"NOT_FOUND"`. */
  readonly codeName: StatusName | "UNKNOWN";
  /** The server's message (the status details), without the code. */
  readonly details: string;
  /** ErrorInfo.reason, or `""`. */
  readonly reason: string;
  /** ErrorInfo.domain (`reins.v1`), or `""`. */
  readonly domain: string;
  /** ErrorInfo.metadata. */
  readonly errorMetadata: Readonly<Record<string, string>>;
  /** BadRequest.field_violations: every field the server refused. */
  readonly fieldViolations: readonly FieldViolation[];
  /** The trailers of the failed call. */
  readonly metadata: grpc.Metadata | undefined;

  constructor(
    code: grpc.status,
    details: string,
    extra: {
      reason?: string;
      domain?: string;
      errorMetadata?: Record<string, string>;
      fieldViolations?: FieldViolation[];
      metadata?: grpc.Metadata;
      cause?: unknown;
    } = {},
  ) {
    const codeName = (grpc.status[code] as StatusName | undefined) ?? "UNKNOWN";
    const reason = extra.reason ?? "";
    super(`${codeName}: ${details}${reason !== "" && reason !== codeName ? ` (${reason})` : ""}`, {
      cause: extra.cause,
    });
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.reason = reason;
    this.domain = extra.domain ?? "";
    this.errorMetadata = extra.errorMetadata ?? {};
    this.fieldViolations = extra.fieldViolations ?? [];
    this.metadata = extra.metadata;
  }
}

interface StatusLike {
  code: number;
  details?: string;
  metadata?: grpc.Metadata;
}

function isStatusLike(value: unknown): value is StatusLike {
  return typeof value === "object" && value !== null && typeof (value as { code?: unknown }).code === "number";
}

/**
 * `err` (a grpc-js ServiceError, or a call's final status) as a ReinsError, with the
 * google.rpc details decoded. Anything else is wrapped as UNKNOWN.
 */
export function toReinsError(err: unknown): ReinsError {
  if (err instanceof ReinsError) {
    return err;
  }
  if (!isStatusLike(err)) {
    return new ReinsError(grpc.status.UNKNOWN, err instanceof Error ? err.message : String(err), { cause: err });
  }
  const metadata = err.metadata;
  const extra = metadata !== undefined ? decodeDetails(metadata) : {};
  return new ReinsError(err.code, err.details ?? "", { ...extra, metadata, cause: err });
}

/** Decodes `grpc-status-details-bin`; undecodable details are left out, never thrown. */
function decodeDetails(metadata: grpc.Metadata): {
  reason?: string;
  domain?: string;
  errorMetadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
} {
  const raw = metadata.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Buffer)) {
    return {};
  }
  const out: ReturnType<typeof decodeDetails> = {};
  try {
    const status = StatusType.toObject(StatusType.decode(raw), { defaults: true }) as {
      details: { type_url: string; value: Uint8Array }[];
    };
    for (const any of status.details) {
      if (any.type_url === ERROR_INFO_URL) {
        const info = ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true }) as {
          reason: string;
          domain: string;
          metadata: Record<string, string>;
        };
        out.reason = info.reason;
        out.domain = info.domain;
        out.errorMetadata = { ...info.metadata };
      } else if (any.type_url === BAD_REQUEST_URL) {
        const bad = BadRequestType.toObject(BadRequestType.decode(any.value), { defaults: true }) as {
          field_violations: FieldViolation[];
        };
        out.fieldViolations = bad.field_violations.map(({ field, description }) => ({ field, description }));
      }
    }
  } catch {
    // Corrupt details: the code and message still say what happened.
  }
  return out;
}
