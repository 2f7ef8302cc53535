/**
 * Reconnect delays: exponential backoff with full jitter, kept between the configured
 * minimum and maximum.
 */

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry): a uniformly random
 * value between `minMs` and `min(maxMs, minMs * 2^(attempt+1))`.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const cap = Math.min(maxMs, minMs * Math.pow(2, Math.min(attempt + 1, 30)));
  return Math.round(minMs + random() * Math.max(0, cap - minMs));
}
