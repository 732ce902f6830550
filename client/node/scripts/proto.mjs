// Build step: gives the package its own copy of the protos and generates their types.
//
// 1. Copies <repo>/proto/reins/**/*.proto into ./proto/ (git-ignored) when the package is
//    built inside the repository checkout, so an installed package loads its protos from
//    its own directory and never needs the checkout. Outside the checkout (a packed
//    tarball) the copy shipped in the package is used as it is.
// 2. Runs proto-loader-gen-types on that copy: TypeScript declarations of the messages
//    exactly as @grpc/proto-loader loads them (same options as src/proto.ts), into
//    src/gen/ (git-ignored). They are types only; nothing generated is committed.
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoProto = resolve(here, "..", "..", "proto", "reins");
const ownProto = join(here, "proto");

if (existsSync(repoProto)) {
  rmSync(ownProto, { recursive: true, force: true });
  mkdirSync(ownProto, { recursive: true });
  cpSync(repoProto, join(ownProto, "reins"), {
    recursive: true,
    filter: (src) => statSync(src).isDirectory() || src.endsWith(".proto"),
  });
} else if (!existsSync(join(ownProto, "reins", "v1", "tasks.proto"))) {
  console.error(`proto.mjs: neither ${repoProto} nor a copy in ${ownProto} exists`);
  process.exit(1);
}

const files = readdirSync(join(ownProto, "reins", "v1"))
  .filter((name) => name.endsWith(".proto"))
  .map((name) => join(ownProto, "reins", "v1", name));
const out = join(here, "src", "gen");
rmSync(out, { recursive: true, force: true });
const bin = join(here, "node_modules", "@grpc", "proto-loader", "build", "bin", "proto-loader-gen-types.js");
const result = spawnSync(
  process.execPath,
  [
    bin,
    "--longs=String",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--grpcLib=@grpc/grpc-js",
    "--includeDirs",
    ownProto,
    "--outDir",
    out,
    ...files,
  ],
  { stdio: "inherit" },
);
if (result.status !== 0) {
  console.error("proto.mjs: proto-loader-gen-types failed");
  process.exit(result.status ?? 1);
}
// The generated files import each other without extensions, as CommonJS allows: mark the
// directory CommonJS for TypeScript. The package imports only their types.
writeFileSync(join(out, "package.json"), '{ "type": "commonjs" }\n');
