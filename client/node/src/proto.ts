// Loads the Reins protos at run time with @grpc/proto-loader, from the package's own copy
// (`<package>/proto/`, copied from the repository's `proto/` at build time by
// scripts/proto.mjs), so an installed package never needs the repository checkout.
//
// The loader options here and the flags given to proto-loader-gen-types in
// scripts/proto.mjs must stay the same: the generated types (src/gen/) describe the
// objects these options produce.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

import type { ProtoGrpcType as TasksProto } from "./gen/tasks.js";
import type { ProtoGrpcType as WorkersProto } from "./gen/workers.js";

/** Where the package's copy of `proto/` is: `<package>/proto/` (this file is `dist/src/proto.js`). */
export const PROTO_DIR = fileURLToPath(new URL("../../proto/", import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false, // camelCase field names, as the generated types have them
  longs: String, // uint64 `version`, int64 seconds: strings, converted where read
  enums: String, // "TASK_STATE_RUNNING"
  defaults: true, // every scalar present, as in proto3
  oneofs: true, // the virtual oneof field (`command: "assign"`, Value's `kind`)
  includeDirs: [PROTO_DIR],
};

export type ReinsV1 = TasksProto["reins"]["v1"] & WorkersProto["reins"]["v1"];

let loaded: ReinsV1 | undefined;

/** The `reins.v1` package: service client constructors and message definitions. */
export function reinsV1(): ReinsV1 {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(["reins/v1/tasks.proto", "reins/v1/workers.proto"], LOADER_OPTIONS);
    const root = grpc.loadPackageDefinition(definition) as unknown as TasksProto & WorkersProto;
    loaded = root.reins.v1;
  }
  return loaded;
}
