// Where a client or worker connects: `host:port`, a URL, or a gRPC target string.
import * as grpc from "@grpc/grpc-js";

/** How to reach a Reins server, as given to `Client` and `Worker`. */
export interface ConnectionOptions {
  /**
   * `host:port`, `http://host:port` (plaintext), `https://host[:port]` (TLS with the
   * system roots), or a gRPC target such as `dns:///host:port` or `unix:/path`.
   */
  server: string;
  /** Overrides the credentials the URL scheme implies (e.g. TLS with a private CA). */
  credentials?: grpc.ChannelCredentials;
  /** Extra gRPC channel options (`grpc.max_receive_message_length`, keepalive, …). */
  channelOptions?: grpc.ChannelOptions;
}

export interface Target {
  /** The gRPC target string. */
  target: string;
  credentials: grpc.ChannelCredentials;
}

const GRPC_SCHEMES = new Set(["dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:"]);

/** Parses `server` into a gRPC target and credentials; throws TypeError when it cannot. */
export function parseServer(server: string, credentials?: grpc.ChannelCredentials): Target {
  const text = server.trim();
  if (text === "") {
    throw new TypeError("server: empty; expected host:port or a URL");
  }
  const scheme = /^([a-z][a-z0-9+.-]*:)/i.exec(text)?.[1]?.toLowerCase();
  if (scheme === "http:" || scheme === "https:") {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new TypeError(`server: not a valid URL: ${JSON.stringify(text.slice(0, 100))}`);
    }
    if ((url.pathname !== "/" && url.pathname !== "") || url.search !== "" || url.hash !== "") {
      throw new TypeError(`server: a URL without a path is expected, got ${JSON.stringify(text.slice(0, 100))}`);
    }
    const tls = scheme === "https:";
    const port = url.port || (tls ? "443" : "80");
    return {
      target: `${url.hostname}:${port}`,
      credentials: credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure()),
    };
  }
  if (scheme !== undefined && GRPC_SCHEMES.has(scheme)) {
    return { target: text, credentials: credentials ?? grpc.credentials.createInsecure() };
  }
  if (!/^(\[[0-9a-f:.]+\]|[^\s/:[\]]+):\d{1,5}$/i.test(text)) {
    throw new TypeError(`server: expected host:port or a URL, got ${JSON.stringify(text.slice(0, 100))}`);
  }
  return { target: text, credentials: credentials ?? grpc.credentials.createInsecure() };
}
