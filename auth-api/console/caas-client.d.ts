// Types of caas-client.js (served beside it at /console/caas-client.d.ts).

export interface Session {
  access_token: string;
  refresh_token: string;
  /** Seconds the access token lives. */
  expires_in: number;
  user_id?: string;
  session_id?: string;
}

export interface ClientOptions {
  /** Tokens from your backend's POST /v1/sdk/session. */
  session: Session;
  /** The gateway; default this page's origin. */
  baseUrl?: string;
  /** Refresh this many seconds before expiry (default 60, at most half the lifetime). */
  refreshMargin?: number;
  /** First reconnect delay cap, ms (default 500). */
  backoffBase?: number;
  /** Largest reconnect delay, ms (default 30000). */
  backoffMax?: number;
}

/** An error carrying the API's code (`origin_not_allowed`, `token_expired`, `session_revoked`, …). */
export class CaasError extends Error {
  code: string;
  status?: number;
  field?: string;
  retryAfter?: number;
  requestId?: string;
  closeCode?: number;
  constructor(code: string, message: string, details?: { status?: number; field?: string; retryAfter?: number; requestId?: string; closeCode?: number });
}

export interface MessageFrame {
  type: "message";
  conversation_id: string;
  message: { id: string; conversation_id: string; sender_id: string; body: string; client_msg_id: string; created_at: number };
}

export class CaasClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly userId: string | undefined;
  readonly accessToken: string;
  state: "idle" | "connecting" | "open" | "closed";
  /** Sockets opened so far. */
  connections: number;
  /** Access-token refreshes so far. */
  refreshes: number;
  refresh(): Promise<void>;
  request(method: string, path: string, body?: unknown): Promise<any>;
  createConversation(memberIds: string[], title?: string): Promise<{ id: string; member_ids: string[] }>;
  postMessage(conversationId: string, body: string, clientMsgId?: string): Promise<MessageFrame["message"]>;
  connect(): void;
  subscribe(conversationId: string): Promise<void>;
  unsubscribe(conversationId: string): Promise<void>;
  send(conversationId: string, body: string, clientMsgId?: string): Promise<{ message_id: string; duplicate: boolean }>;
  onMessage(handler: (frame: MessageFrame) => void): () => void;
  close(): void;
  logout(): Promise<void>;
}

export function errorFromResponse(response: Response): Promise<CaasError>;
export function randomId(): string;
