// Types of SSEFlushSource, the flask-sse-flush client (/sse-flush.js, /sse-flush.mjs).

export interface SSEFlushSourceInit {
  /** Request headers, or a function giving them at each connection (a fresh token). */
  headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
  /** The request method (default "GET"). */
  method?: string;
  /** A request body that can be sent again, or a function making one per connection. */
  body?: BodyInit | null | (() => BodyInit | null);
  /** Send cookies across origins (credentials "include"); else "same-origin". */
  withCredentials?: boolean;
  /** First reconnection delay, ms (default 1000); the server's `retry:` replaces it. */
  retry?: number;
  /** The longest reconnection delay after repeated failures, ms (default 30000). */
  maxRetry?: number;
  /**
   * No byte for this long (ms) means the connection is dead: reconnect. By default
   * twice the keepalive period the server announces (SSE-Flush-Keepalive); 0 turns it off.
   */
  heartbeatTimeout?: number;
  /**
   * A request unanswered this long (ms) was lost with its connection: retry. By default an
   * eighth of the heartbeat timeout last in force (a quarter of the keepalive period);
   * none before a first answer.
   */
  connectTimeout?: number;
  /** Keep the last event id in sessionStorage (per URL), to resume after a reload (default true). */
  resume?: boolean;
  /** One connection per browser for this URL, shared by every tab of the origin (default false). */
  shareTabs?: boolean;
  /**
   * Event types after which the stream is over (when the event has an id of its own): no
   * reconnection. By default what the server names (SSE-Flush-Final: a render job's
   * "complete" and "error").
   */
  finalEvents?: string[];
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
}

/** The `error` event: `status` is the HTTP status when there was one, else null. */
export interface SSEFlushErrorEvent extends Event {
  readonly status: number | null;
  /** When the client retries: in how many ms (absent when it stopped for good). */
  readonly retryIn?: number;
}

export interface SSEFlushSourceEventMap {
  open: Event;
  message: MessageEvent<string>;
  error: SSEFlushErrorEvent | MessageEvent<string>;
}

export declare class SSEFlushSource extends EventTarget {
  constructor(url: string | URL, options?: SSEFlushSourceInit);
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSED: 2;
  static readonly Parser: typeof EventStreamParser;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;
  readonly url: string;
  readonly withCredentials: boolean;
  readonly readyState: 0 | 1 | 2;
  /** The id of the last event received. */
  readonly lastEventId: string;
  onopen: ((this: SSEFlushSource, event: Event) => unknown) | null;
  onmessage: ((this: SSEFlushSource, event: MessageEvent<string>) => unknown) | null;
  onerror: ((this: SSEFlushSource, event: SSEFlushErrorEvent | MessageEvent<string>) => unknown) | null;
  /** Stop for good, and forget the stored resume point. */
  close(): void;
  addEventListener<K extends keyof SSEFlushSourceEventMap>(
    type: K,
    listener: (this: SSEFlushSource, event: SSEFlushSourceEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions
  ): void;
  addEventListener(
    type: string,
    listener: (this: SSEFlushSource, event: MessageEvent<string>) => unknown,
    options?: boolean | AddEventListenerOptions
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | ((event: MessageEvent<string>) => unknown),
    options?: boolean | EventListenerOptions
  ): void;
}

/** The WHATWG event-stream parser SSEFlushSource reads with. */
export declare class EventStreamParser {
  /**
   * @param onEvent called at each blank line; `data` is null for a block without data,
   *   `id` is the block's own id field (null if none).
   * @param onRetry called with each valid `retry:` value, ms.
   * @param lastEventId where a resumed stream's last event id starts.
   */
  constructor(
    onEvent: (type: string, data: string | null, lastEventId: string, id: string | null) => void,
    onRetry?: (ms: number) => void,
    lastEventId?: string
  );
  lastEventId: string;
  /** Parse a chunk: UTF-8 bytes, or text. */
  feed(chunk: Uint8Array | string): void;
}

export default SSEFlushSource;

declare global {
  // The classic script (/sse-flush.js) defines it on the global object.
  var SSEFlushSource: typeof import("./sse-flush").SSEFlushSource;
}
