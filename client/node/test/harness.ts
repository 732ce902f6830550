// Test harness: a real redis-server and real reinsd replicas on free loopback ports, as
// tests/harness does in Rust and client/python/tests/harness.py in Python, plus waits
// with deadlines. Nothing sleeps to synchronise: every wait polls or watches with a
// deadline (PATIENCE).
//
// - redis-server: `$REDIS_SERVER_BIN` or `redis-server` on PATH, never on 6379, in a
//   temporary directory, nothing persisted.
// - reinsd: `$REINSD_BIN` or `<repo>/target/debug/reinsd`; `reins` (the Rust CLI):
//   `$REINS_BIN` or the `reins` next to reinsd.
// Every process started is killed when the test file's process exits, also on a failure.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, openSync, closeSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { Client, isTerminal, type Task } from "@reins/sdk";

/** The package directory (this file is dist/test/harness.js). */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPO = resolve(PACKAGE_DIR, "..", "..");

/** Upper bound of every wait: generous, the machine is shared. */
export const PATIENCE_MS = 20_000;

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
    }
  }
  for (const dir of tempDirs) {
    if (!KEEP_LOGS) rmSync(dir, { recursive: true, force: true });
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** REINS_TEST_KEEP_LOGS=1 keeps the replicas' directories (and logs) for a look afterwards. */
const KEEP_LOGS = process.env.REINS_TEST_KEEP_LOGS === "1";

function removeTempDir(dir: string): void {
  tempDirs.delete(dir);
  if (KEEP_LOGS) {
    console.error(`kept ${dir}`);
    return;
  }
  rmSync(dir, { recursive: true, force: true });
}

export function reinsdBinary(): string {
  const path = process.env.REINSD_BIN ?? join(REPO, "target", "debug", "reinsd");
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build --bins\` in ${REPO} first (or set REINSD_BIN)`);
  }
  return path;
}

export function reinsBinary(): string {
  const path = process.env.REINS_BIN ?? join(dirname(reinsdBinary()), "reins");
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build --bins\` in ${REPO} first (or set REINS_BIN)`);
  }
  return path;
}

/** A port nobody listens on now (another process may take it before it is used). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      data += chunk.toString();
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
  });
}

/** Polls `probe` until it returns a value that is not undefined, or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs = PATIENCE_MS,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) {
        return value;
      }
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`not ${what} within ${timeoutMs} ms${lastError ? `: ${String(lastError)}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10)); // polling interval, with a deadline
  }
}

export class RedisServer {
  private constructor(
    readonly port: number,
    private readonly process: ChildProcess,
    private readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<RedisServer> {
    const binary = process.env.REDIS_SERVER_BIN ?? "redis-server";
    for (let tries = 0; tries < 5; tries++) {
      const port = await freePort();
      if (port === 6379) continue;
      const dir = tempDir("reins-node-redis-");
      const child = spawn(
        binary,
        ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--daemonize", "no",
          "--loglevel", "warning", "--dir", dir],
        { stdio: "ignore" },
      );
      children.add(child);
      const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
      const redis = new RedisServer(port, child, dir);
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && child.exitCode === null) {
        const failed = await Promise.race([spawnError, answersPing(port)]);
        if (failed instanceof Error) {
          throw new Error(`cannot run ${binary}: ${failed.message} (install redis-server)`);
        }
        if (failed) return redis;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await redis.stop();
    }
    throw new Error("redis-server did not start on a free port");
  }

  async stop(): Promise<void> {
    await stopChild(this.process);
    removeTempDir(this.dir);
  }
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill(signal);
    await exited;
  }
  children.delete(child);
}

/** A running reinsd; `address` is where it listens (`127.0.0.1:PORT`). */
export class Reinsd {
  private constructor(
    readonly replicaId: string,
    readonly address: string,
    private readonly process: ChildProcess,
    private readonly dir: string,
  ) {}

  get logPath(): string {
    return join(this.dir, "reinsd.log");
  }

  static async start(args: string[], replicaId: string, listen = "127.0.0.1:0"): Promise<Reinsd> {
    const dir = tempDir(`reins-node-reinsd-${replicaId}-`);
    const log = openSync(join(dir, "reinsd.log"), "w");
    const child = spawn(
      reinsdBinary(),
      ["--listen", listen, "--replica-id", replicaId, "--shutdown-grace", "2s", ...args],
      { stdio: ["ignore", "pipe", log], env: { ...process.env, RUST_LOG: "info,reins_server=debug" } },
    );
    closeSync(log);
    children.add(child);
    const lines = createInterface({ input: child.stdout! });
    const first = await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), PATIENCE_MS);
      lines.once("line", (line) => {
        clearTimeout(timer);
        resolve(line);
      });
      child.once("exit", () => resolve(undefined));
    });
    lines.on("line", () => {}); // keep draining stdout so reinsd never blocks on it
    const prefix = "reinsd listening on ";
    if (first === undefined || !first.startsWith(prefix)) {
      await stopChild(child);
      const text = readFileSync(join(dir, "reinsd.log"), "utf8");
      throw new Error(`reinsd ${replicaId} did not start (printed ${JSON.stringify(first)}):\n${text}`);
    }
    return new Reinsd(replicaId, first.slice(prefix.length).trim(), child, dir);
  }

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** Drains the replica as a rolling update does (SIGTERM); resolves with its exit code. */
  drain(): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => {
      if (this.process.exitCode !== null || this.process.signalCode !== null) {
        resolve(this.process.exitCode);
      } else {
        this.process.once("exit", (code) => resolve(code));
      }
    });
    this.process.kill("SIGTERM");
    return exited;
  }

  /** Kills the process (SIGKILL: a crash) and removes its directory. */
  async kill(): Promise<void> {
    await stopChild(this.process);
    removeTempDir(this.dir);
  }
}

/** Replicas `a` and `b` of one deployment on one Redis (and more on demand). */
export class Cluster {
  readonly replicas: Reinsd[] = [];
  private constructor(readonly redis: RedisServer) {}

  static async start(): Promise<Cluster> {
    const cluster = new Cluster(await RedisServer.start());
    try {
      await Promise.all([cluster.replica("a"), cluster.replica("b")]);
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  get a(): Reinsd {
    return this.named("a");
  }

  get b(): Reinsd {
    return this.named("b");
  }

  private named(id: string): Reinsd {
    const replica = this.replicas.find((r) => r.replicaId === id);
    if (replica === undefined) throw new Error(`no replica ${id}`);
    return replica;
  }

  /** Starts one more replica on this Redis. */
  async replica(replicaId: string, listen?: string): Promise<Reinsd> {
    const replica = await Reinsd.start(["--redis-url", this.redis.url], replicaId, listen);
    this.replicas.push(replica);
    return replica;
  }

  /** Kills a replica (SIGKILL) and forgets it. */
  async kill(replica: Reinsd): Promise<void> {
    await replica.kill();
    this.replicas.splice(this.replicas.indexOf(replica), 1);
  }

  logs(): string {
    return this.replicas.map((r) => `---- reinsd ${r.replicaId} (${r.address}) ----\n${r.log()}`).join("\n");
  }

  async stop(): Promise<void> {
    for (const replica of [...this.replicas]) {
      await replica.kill();
    }
    this.replicas.length = 0;
    await this.redis.stop();
  }
}

/** Watches the task until `predicate` holds; fails if it ends first or the deadline passes. */
export async function watchUntil(
  client: Client,
  taskId: string,
  predicate: (task: Task) => boolean,
  what: string,
  timeoutMs = PATIENCE_MS,
): Promise<Task> {
  let last: Task | undefined;
  try {
    for await (const { task } of client.watch(taskId, { signal: AbortSignal.timeout(timeoutMs) })) {
      last = task;
      if (predicate(task)) {
        return task;
      }
    }
  } catch (err) {
    throw new Error(`task ${taskId}: not ${what} within ${timeoutMs} ms (${String(err)}); last seen: ${JSON.stringify(last)}`);
  }
  throw new Error(`task ${taskId} ended before it was ${what}: ${JSON.stringify(last)}`);
}

export function untilTerminal(client: Client, taskId: string, timeoutMs = PATIENCE_MS): Promise<Task> {
  return watchUntil(client, taskId, (task) => isTerminal(task.state), "finished", timeoutMs);
}

let kindCounter = 0;
/** A task kind of this test's own, so tests never share workers. */
export function uniqueKind(name: string): string {
  kindCounter += 1;
  return `node-${name}-${process.pid}-${kindCounter}`;
}

/** The versions the "started from Python" test installs into its virtualenv. */
const PYTHON_REQUIREMENTS = ["grpcio==1.85.1", "grpcio-tools==1.85.1", "protobuf==7.36.2"];

/**
 * A Python with grpcio and grpcio-tools: a virtualenv in `<package>/.cache/venv`
 * (git-ignored), created and filled on first use, reused while it has the pinned versions.
 */
export async function pythonWithGrpc(): Promise<string> {
  const venv = join(PACKAGE_DIR, ".cache", "venv");
  const python = join(venv, "bin", "python");
  const check = `import importlib.metadata as m, sys; sys.exit(0 if [f"{p}=={m.version(p)}" for p in ("grpcio", "grpcio-tools", "protobuf")] == ${JSON.stringify(PYTHON_REQUIREMENTS)} else 1)`;
  if (existsSync(python) && spawnSync(python, ["-c", check]).status === 0) {
    return python;
  }
  const base = process.env.PYTHON ?? "python3";
  await runAsync(base, ["-m", "venv", "--clear", venv]);
  await runAsync(python, ["-m", "pip", "install", "-q", "--disable-pip-version-check", ...PYTHON_REQUIREMENTS]);
  return python;
}

/** Runs a program to its end without blocking the event loop; rejects with its output on failure. */
export function runAsync(program: string, args: string[], timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let out = "";
    let err = "";
    child.stdout!.on("data", (chunk) => (out += chunk));
    child.stderr!.on("data", (chunk) => (err += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      children.delete(child);
      reject(new Error(`cannot run ${program}: ${error.message}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolve(out);
      else reject(new Error(`${program} ${args.join(" ")} failed (${signal ?? `exit ${code}`}):\n${out}\n${err}`));
    });
  });
}
