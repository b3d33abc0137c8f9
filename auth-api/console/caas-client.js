// caas-client.js: the CAAS browser client for end users (an ES module, no
// dependencies). Served by every gateway at /console/caas-client.js; types in
// caas-client.d.ts beside it. See docs/API_REFERENCE.md, "Browser client".
//
// It holds an end user's session (never an API key: your backend creates the
// session with its key and hands the tokens to the page), refreshes the
// access token before it expires through /v1/sdk/refresh, keeps one
// WebSocket to /v1/ws (subprotocols `caas.v1` and `caas.bearer.<token>`),
// moves the socket to each new token in-band (a `refresh` frame, so the
// socket is not dropped), reconnects with exponential backoff and full
// jitter, and reports every refusal as a CaasError carrying the API's code.

/**
 * @typedef {object} Session
 * @property {string} access_token
 * @property {string} refresh_token
 * @property {number} expires_in  seconds the access token lives
 * @property {string} [user_id]
 * @property {string} [session_id]
 */

/**
 * @typedef {object} ClientOptions
 * @property {Session} session  tokens from your backend's POST /v1/sdk/session
 * @property {string} [baseUrl]  the gateway, default this page's origin
 * @property {number} [refreshMargin]  refresh this many seconds before expiry (default 60, at most half the lifetime)
 * @property {number} [backoffBase]  first reconnect delay cap in ms (default 500)
 * @property {number} [backoffMax]  largest reconnect delay in ms (default 30000)
 */

/** An error with the API's code (`origin_not_allowed`, `token_expired`, …). */
export class CaasError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number, field?: string, retryAfter?: number, requestId?: string, closeCode?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'CaasError';
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} HTTP status, when the error came from a response */
    this.status = details.status;
    /** @type {string | undefined} the offending input (`cidrs[2]`) on a 400 */
    this.field = details.field;
    /** @type {number | undefined} seconds to wait (429, 503) */
    this.retryAfter = details.retryAfter;
    /** @type {string | undefined} quote it when reporting a problem */
    this.requestId = details.requestId;
    /** @type {number | undefined} WebSocket close code, for socket errors */
    this.closeCode = details.closeCode;
  }
}

/** What each close code means for the client; see API_REFERENCE.md. */
const CLOSE_REASONS = {
  1001: ['server_going_away', true],
  1006: ['connection_lost', true],
  1009: ['frame_too_large', false],
  4000: ['idle_timeout', true],
  4001: ['token_expired', true],
  4002: ['too_many_invalid_frames', false],
  4003: ['session_revoked', false],
  4008: ['rate_limited', true],
  4009: ['slow_reader', true],
  4010: ['too_many_connections', true],
  4011: ['tenant_connection_limit', true],
};

/**
 * An error from a response body `{"error": {"code", "message", "field"?}}`.
 * @param {Response} response
 * @returns {Promise<CaasError>}
 */
export async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && typeof body.error === 'object' && body.error ? body.error : {};
  const retry = Number(response.headers.get('retry-after'));
  return new CaasError(
    error.code || `http_${response.status}`,
    error.message || response.statusText || 'request refused',
    {
      status: response.status,
      field: error.field,
      retryAfter: Number.isFinite(retry) && retry > 0 ? retry : undefined,
      requestId: response.headers.get('x-request-id') || undefined,
    },
  );
}

/**
 * An end user's connection to CAAS. Events (listen with addEventListener):
 * `message` (detail: the server's message frame), `state` (detail:
 * `connecting` | `open` | `closed`), `refreshed` (detail: the new expiry,
 * Unix seconds), `error` (detail: a CaasError), `ended` (detail: a CaasError:
 * the session is over, sign in again).
 */
export class CaasClient extends EventTarget {
  /** @param {ClientOptions} options */
  constructor(options) {
    super();
    if (!options || !options.session || !options.session.access_token || !options.session.refresh_token) {
      throw new TypeError('CaasClient needs a session with access_token and refresh_token');
    }
    this.baseUrl = (options.baseUrl || globalThis.location.origin).replace(/\/$/, '');
    this.refreshMargin = options.refreshMargin ?? 60;
    this.backoffBase = options.backoffBase ?? 500;
    this.backoffMax = options.backoffMax ?? 30000;
    /** @type {WebSocket | null} */
    this.socket = null;
    /** @type {'idle' | 'connecting' | 'open' | 'closed'} */
    this.state = 'idle';
    this.attempts = 0;
    this.ended = false;
    this.wantSocket = false;
    this.nextId = 1;
    /** @type {Map<string, {resolve: Function, reject: Function}>} */
    this.pending = new Map();
    /** @type {Set<string>} conversations to re-subscribe after a reconnect */
    this.subscriptions = new Set();
    /** Sockets opened so far (a refresh must not add one). */
    this.connections = 0;
    /** Access tokens refreshed so far. */
    this.refreshes = 0;
    this.refreshTimer = 0;
    this.reconnectTimer = 0;
    /** @type {Promise<void> | null} */
    this.refreshing = null;
    this.setSession(options.session);
  }

  /** The user this session belongs to. */
  get userId() {
    return this.session.user_id;
  }

  /** The current access token (for calls this module does not wrap). */
  get accessToken() {
    return this.session.access_token;
  }

  /** @param {Session} session */
  setSession(session) {
    this.session = { ...session };
    this.expiresAt = Date.now() + session.expires_in * 1000;
    clearTimeout(this.refreshTimer);
    const margin = Math.min(this.refreshMargin, session.expires_in / 2);
    const due = Math.max(0, (session.expires_in - margin) * 1000);
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), due);
  }

  /**
   * Uses the refresh token once (it is single use: concurrent callers share
   * one request) and moves an open socket to the new token in-band.
   * @returns {Promise<void>}
   */
  refresh() {
    if (this.ended) return Promise.reject(new CaasError('session_ended', 'the session has ended'));
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async doRefresh() {
    let response;
    try {
      response = await fetch(`${this.baseUrl}/v1/sdk/refresh`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: this.session.refresh_token }),
        credentials: 'omit',
      });
    } catch (cause) {
      // Offline: try again soon; the token may still be valid a while.
      const error = new CaasError('network_error', String(cause));
      this.emit('error', error);
      clearTimeout(this.refreshTimer);
      this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), this.delay());
      throw error;
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (response.status === 401) {
        this.end(error);
      } else {
        this.emit('error', error);
      }
      throw error;
    }
    const session = await response.json();
    this.setSession(session);
    this.refreshes += 1;
    if (this.socket && this.state === 'open') {
      const ack = await this.frame({ type: 'refresh', token: session.access_token });
      this.emit('refreshed', ack.expires_at);
    } else {
      this.emit('refreshed', Math.floor(this.expiresAt / 1000));
    }
  }

  /**
   * A JSON call through the gateway with the access token; a 401
   * `token_expired` is refreshed and retried once.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async request(method, path, body) {
    for (let attempt = 0; ; attempt += 1) {
      const headers = { authorization: `Bearer ${this.session.access_token}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      let response;
      try {
        response = await fetch(`${this.baseUrl}${path}`, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          credentials: 'omit',
        });
      } catch (cause) {
        // A browser hides why a cross-origin call failed (CORS): say so.
        throw new CaasError('network_error', `the request did not complete (network or CORS): ${cause}`);
      }
      if (response.ok) return response.status === 204 ? null : response.json();
      const error = await errorFromResponse(response);
      if (error.code === 'token_expired' && attempt === 0) {
        await this.refresh();
        continue;
      }
      throw error;
    }
  }

  /**
   * @param {string[]} memberIds
   * @param {string} [title]
   */
  createConversation(memberIds, title) {
    return this.request('POST', '/v1/conversations', title ? { member_ids: memberIds, title } : { member_ids: memberIds });
  }

  /** Posts over HTTP (`POST /v1/messages`); the socket delivers it to members.
   * @param {string} conversationId
   * @param {string} body
   * @param {string} [clientMsgId]
   */
  postMessage(conversationId, body, clientMsgId = randomId()) {
    return this.request('POST', '/v1/messages', { conversation_id: conversationId, body, client_msg_id: clientMsgId });
  }

  /** Opens the socket (and keeps it open until close() or the session ends). */
  connect() {
    this.wantSocket = true;
    if (this.state === 'connecting' || this.state === 'open') return;
    this.open();
  }

  open() {
    clearTimeout(this.reconnectTimer);
    if (this.ended || !this.wantSocket) return;
    this.setState('connecting');
    const url = `${this.baseUrl.replace(/^http/, 'ws')}/v1/ws`;
    let socket;
    try {
      socket = new WebSocket(url, ['caas.v1', `caas.bearer.${this.session.access_token}`]);
    } catch (cause) {
      this.emit('error', new CaasError('socket_failed', String(cause)));
      this.schedule();
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.addEventListener('open', () => {
      opened = true;
      this.connections += 1;
      this.attempts = 0;
      this.setState('open');
      for (const conversation of this.subscriptions) {
        this.frame({ type: 'subscribe', conversation_id: conversation }).catch((e) => this.emit('error', e));
      }
    });
    socket.addEventListener('message', (event) => this.onFrame(event.data));
    socket.addEventListener('close', (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failPending(new CaasError('socket_closed', 'the socket closed', { closeCode: event.code }));
      this.setState('closed');
      if (!this.wantSocket || this.ended) return;
      if (!opened) {
        // The upgrade was refused (401, 403) or never reached the gateway;
        // a browser does not say which. An expired token is the one cause
        // this side can fix.
        this.emit(
          'error',
          new CaasError('socket_refused', 'the WebSocket upgrade was refused (token, Origin or network)', {
            closeCode: event.code,
          }),
        );
        if (Date.now() >= this.expiresAt - 5000) {
          this.refresh().then(() => this.schedule(), () => {});
          return;
        }
        this.schedule();
        return;
      }
      const [code, retry] = CLOSE_REASONS[event.code] || ['socket_closed', true];
      const error = new CaasError(code, event.reason || `socket closed (${event.code})`, { closeCode: event.code });
      if (event.code === 4003) {
        this.end(error);
        return;
      }
      this.emit('error', error);
      if (!retry) {
        this.wantSocket = false;
        return;
      }
      if (event.code === 4001) {
        this.refresh().then(() => this.schedule(), () => {});
        return;
      }
      this.schedule();
    });
  }

  /** Full jitter: a random delay up to min(max, base·2^attempt). */
  delay() {
    const cap = Math.min(this.backoffMax, this.backoffBase * 2 ** Math.min(this.attempts, 16));
    return Math.floor(Math.random() * cap);
  }

  schedule() {
    if (this.ended || !this.wantSocket) return;
    const wait = this.delay();
    this.attempts += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.open(), wait);
  }

  /** @param {string} data */
  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    const waiter = frame.id !== undefined ? this.pending.get(String(frame.id)) : undefined;
    if (frame.type === 'ack' && waiter) {
      this.pending.delete(String(frame.id));
      waiter.resolve(frame);
    } else if (frame.type === 'error') {
      const error = new CaasError(frame.code, frame.message || frame.code);
      if (waiter) {
        this.pending.delete(String(frame.id));
        waiter.reject(error);
      } else {
        this.emit('error', error);
      }
    } else if (frame.type === 'message') {
      this.emit('message', frame);
    }
  }

  /**
   * Sends a frame and resolves with its ack (rejects with its error).
   * @param {Record<string, unknown>} frame
   * @returns {Promise<any>}
   */
  frame(frame) {
    const socket = this.socket;
    if (!socket || this.state !== 'open') {
      return Promise.reject(new CaasError('socket_not_open', 'the socket is not open'));
    }
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      socket.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** @param {CaasError} error */
  failPending(error) {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }

  /** Receive a conversation's messages (kept across reconnects).
   * @param {string} conversationId
   */
  async subscribe(conversationId) {
    this.subscriptions.add(conversationId);
    if (this.state === 'open') await this.frame({ type: 'subscribe', conversation_id: conversationId });
  }

  /** @param {string} conversationId */
  async unsubscribe(conversationId) {
    this.subscriptions.delete(conversationId);
    if (this.state === 'open') await this.frame({ type: 'unsubscribe', conversation_id: conversationId });
  }

  /** Sends over the socket; resolves with the ack (`message_id`, `duplicate`).
   * @param {string} conversationId
   * @param {string} body
   * @param {string} [clientMsgId]
   */
  send(conversationId, body, clientMsgId = randomId()) {
    return this.frame({ type: 'message', conversation_id: conversationId, body, client_msg_id: clientMsgId });
  }

  /** Calls `handler` with each message frame; returns a function that stops it.
   * @param {(frame: any) => void} handler
   */
  onMessage(handler) {
    const listener = (event) => handler(/** @type {CustomEvent} */ (event).detail);
    this.addEventListener('message', listener);
    return () => this.removeEventListener('message', listener);
  }

  /** Closes the socket without ending the session. */
  close() {
    this.wantSocket = false;
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close(1000, 'client closed');
  }

  /** Ends the session everywhere (POST /v1/sdk/logout) and closes the socket. */
  async logout() {
    const refreshToken = this.session.refresh_token;
    this.end(new CaasError('logged_out', 'signed out'));
    const response = await fetch(`${this.baseUrl}/v1/sdk/logout`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ refresh_token: refreshToken }),
      credentials: 'omit',
    });
    if (!response.ok) throw await errorFromResponse(response);
  }

  /** @param {CaasError} error */
  end(error) {
    if (this.ended) return;
    this.ended = true;
    this.wantSocket = false;
    clearTimeout(this.refreshTimer);
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close(1000, 'session ended');
    this.emit('ended', error);
  }

  /** @param {'connecting' | 'open' | 'closed'} state */
  setState(state) {
    this.state = state;
    this.emit('state', state);
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** A random id (client_msg_id) from the browser's CSPRNG. */
export function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
