/**
 * Typed errors: every failure the SDK reports is a SyncgateError with a `code`.
 *
 * Server codes are the contract's (error frames and HTTP bodies); the SDK adds its own
 * for what happens on the client side (`disconnected`, `timeout`, `handler_failed`,
 * `closed`, `connect_failed`).
 */

/** Error codes of the syncgate contract, in error frames and HTTP error bodies. */
export type ServerErrorCode =
  | "invalid_request"
  | "invalid_frame"
  | "unknown_op"
  | "invalid_message_type"
  | "forbidden"
  | "not_found"
  | "rate_limit_exceeded"
  | "payload_too_large"
  | "unauthorized"
  | "idempotency_conflict"
  | "service_unavailable"
  | "internal";

/** Codes the SDK itself reports. */
export type ClientErrorCode =
  | "disconnected" // the socket closed before the answer came
  | "timeout" // no answer in requestTimeoutMs
  | "handler_failed" // an event handler threw; the event was not acked and comes again
  | "closed" // the client was closed with close()
  | "connect_failed"; // a connection attempt failed (the SDK retries with backoff)

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export class SyncgateError extends Error {
  readonly code: ErrorCode;
  /** WebSocket close code, when the error comes from a close. */
  readonly closeCode?: number;
  /** HTTP status, for errors of the server API client. */
  readonly status?: number;
  /** The event a failed handler was given. */
  readonly eventId?: string;
  /** The original error (e.g. what a handler threw). */
  readonly cause?: unknown;

  constructor(
    code: ErrorCode,
    message: string,
    extra: { closeCode?: number; status?: number; eventId?: string; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "SyncgateError";
    this.code = code;
    this.closeCode = extra.closeCode;
    this.status = extra.status;
    this.eventId = extra.eventId;
    this.cause = extra.cause;
  }
}
