// Unit tests of the pure building blocks: backoff, JSON ⇄ Value, server addresses.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Backoff } from "@reins/sdk";
import { parseServer } from "../src/address.js";
import { fromValue, toValue } from "../src/convert.js";

describe("Backoff", () => {
  test("doubles up to the cap, each delay in the upper half of its bound", () => {
    const low = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 }, () => 0);
    assert.deepEqual(Array.from({ length: 6 }, () => low.next()), [50, 100, 200, 400, 500, 500]);
    const high = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 }, () => 0.999999);
    const delays = Array.from({ length: 6 }, () => high.next());
    assert.deepEqual(delays.map(Math.round), [100, 200, 400, 800, 1000, 1000]);
  });

  test("jitter spreads delays; reset starts over", () => {
    const backoff = new Backoff({ initialDelayMs: 1000, maxDelayMs: 1000 });
    const delays = new Set(Array.from({ length: 20 }, () => backoff.next()));
    assert.ok(delays.size > 1);
    assert.ok([...delays].every((d) => d >= 500 && d <= 1000));
    const b = new Backoff({ initialDelayMs: 10, maxDelayMs: 1000 }, () => 0);
    b.next();
    b.next();
    b.reset();
    assert.equal(b.next(), 5);
  });

  test("refuses nonsense", () => {
    assert.throws(() => new Backoff({ initialDelayMs: 0 }), RangeError);
    assert.throws(() => new Backoff({ initialDelayMs: 100, maxDelayMs: 50 }), RangeError);
    assert.throws(() => new Backoff({ multiplier: 0.5 }), RangeError);
  });
});

describe("JSON ⇄ google.protobuf.Value", () => {
  test("round-trips JSON; undefined members are left out, as JSON.stringify does", () => {
    const value = { s: "x", n: -1.5, t: true, z: null, l: [1, [2], { a: "b" }], o: {}, u: undefined };
    const { u: _, ...expected } = value;
    assert.deepEqual(fromValue(toValue(value) as Parameters<typeof fromValue>[0]), expected);
    assert.deepEqual(fromValue(toValue(new Date(0)) as Parameters<typeof fromValue>[0]), "1970-01-01T00:00:00.000Z");
  });

  test("refuses what JSON cannot carry, naming where", () => {
    assert.throws(() => toValue({ a: [1, Infinity] }), /a\[1\]/);
    assert.throws(() => toValue({ f: () => 1 }), /a function at f/);
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    assert.throws(() => toValue(cycle), /cycle/);
  });
});

describe("server addresses", () => {
  test("host:port, URLs and gRPC targets", () => {
    assert.equal(parseServer("127.0.0.1:50051").target, "127.0.0.1:50051");
    assert.equal(parseServer("localhost:1").target, "localhost:1");
    assert.equal(parseServer("[::1]:50051").target, "[::1]:50051");
    assert.equal(parseServer("http://reins.internal:8080").target, "reins.internal:8080");
    assert.equal(parseServer("http://reins.internal:8080/").target, "reins.internal:8080");
    assert.equal(parseServer("https://reins.example.com").target, "reins.example.com:443");
    assert.equal(parseServer("dns:///reins:50051").target, "dns:///reins:50051");
    assert.equal(parseServer("unix:/run/reins.sock").target, "unix:/run/reins.sock");
  });

  test("refuses what it cannot connect to", () => {
    for (const bad of ["", "reins", "http://h:1/v1", "ftp://h:1", "h:port"]) {
      assert.throws(() => parseServer(bad), TypeError, bad);
    }
  });
});
