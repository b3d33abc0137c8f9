// The CAAS console: a tenant's dashboard in the browser. Every call goes
// through the gateway with the dashboard token, which lives in this page's
// memory only (a reload signs out). No inline script or style: the page is
// served with Content-Security-Policy default-src 'self'.

import { CaasClient, CaasError, errorFromResponse } from './caas-client.js';

/** @type {string | null} the dashboard token */
let token = null;
/** @type {CaasClient | null} the "try it" page's test user */
let tryClient = null;
/** @type {string | null} the conversation the "try it" page is in */
let conversation = null;
/** @type {(number | null)[]} cursors of the activity pages seen, newest first */
let activityCursors = [null];
/** @type {string | null} the key waiting for a revoke confirmation */
let revoking = null;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const PAGES = ['signin', 'profile', 'keys', 'whitelists', 'quotas', 'activity', 'try'];

function setStatus(text) {
  $('status').textContent = text;
}

/** @param {unknown} error */
function showError(error) {
  const box = $('error');
  if (!error) {
    box.hidden = true;
    box.textContent = '';
    return;
  }
  box.hidden = false;
  box.textContent = describe(error);
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof CaasError) {
    const id = error.requestId ? ` (request ${error.requestId})` : '';
    return `${error.code}: ${error.message}${id}`;
  }
  return String(error);
}

/**
 * A dashboard call. A 401 means the dashboard session ended: back to sign-in.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 */
async function api(method, path, body) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
    });
  } catch (cause) {
    throw new CaasError('network_error', `the gateway did not answer: ${cause}`);
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  const error = await errorFromResponse(response);
  if (response.status === 401 && token && !path.endsWith('/login')) {
    await signedOut(`Signed out: ${describe(error)}`);
  }
  throw error;
}

function when(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  return new Date(seconds * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** @param {string} tag @param {string} text */
function cell(tag, text, className) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function show(page) {
  const signedIn = token !== null;
  if (!signedIn) page = 'signin';
  if (signedIn && (page === 'signin' || !PAGES.includes(page))) page = 'profile';
  $('nav').hidden = !signedIn;
  for (const section of document.querySelectorAll('section[data-page]')) {
    /** @type {HTMLElement} */ (section).hidden = section.getAttribute('data-page') !== page;
  }
  for (const link of document.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === `#${page}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.body.dataset.page = page;
  return page;
}

async function route() {
  const page = show(location.hash.replace(/^#/, '') || 'profile');
  showError(null);
  try {
    if (page === 'profile') await loadProfile();
    if (page === 'keys') await loadKeys();
    if (page === 'whitelists') await loadWhitelists();
    if (page === 'quotas') await loadQuotas();
    if (page === 'activity') await loadActivity(activityCursors[activityCursors.length - 1]);
  } catch (error) {
    showError(error);
  }
  document.body.dataset.ready = page;
}

async function signedOut(message) {
  token = null;
  await stopTry();
  $('new-key').hidden = true;
  setStatus(message);
  if (location.hash !== '#signin') location.hash = '#signin';
  else show('signin');
}

// Sign-in and registration.

$('signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(null);
  try {
    const grant = await api('POST', '/v1/client/login', {
      email: /** @type {HTMLInputElement} */ ($('signin-email')).value,
      password: /** @type {HTMLInputElement} */ ($('signin-password')).value,
    });
    token = grant.access_token;
    /** @type {HTMLInputElement} */ ($('signin-password')).value = '';
    setStatus('Signed in.');
    activityCursors = [null];
    if (location.hash === '#profile') await route();
    else location.hash = '#profile';
  } catch (error) {
    showError(error);
  }
});

$('register-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(null);
  try {
    const registered = await api('POST', '/v1/client/register', {
      name: /** @type {HTMLInputElement} */ ($('register-name')).value,
      email: /** @type {HTMLInputElement} */ ($('register-email')).value,
      password: /** @type {HTMLInputElement} */ ($('register-password')).value,
    });
    /** @type {HTMLInputElement} */ ($('register-password')).value = '';
    /** @type {HTMLInputElement} */ ($('signin-email')).value = registered.email;
    showNewKey(registered.api_key.key);
    setStatus(`Registered ${registered.name} (${registered.client_id}). Sign in below.`);
  } catch (error) {
    showError(error);
  }
});

$('sign-out').addEventListener('click', async () => {
  try {
    await stopTry();
    await api('POST', '/v1/client/logout');
  } catch (error) {
    showError(error);
  }
  await signedOut('Signed out.');
});

$('sign-out-all').addEventListener('click', async () => {
  try {
    await stopTry();
    const result = await api('POST', '/v1/client/logout-all');
    await signedOut(`Signed out everywhere (${result.revoked_sessions} sessions ended).`);
  } catch (error) {
    await signedOut(`Signed out: ${describe(error)}`);
  }
});

// A new key, shown once.

function showNewKey(key) {
  $('new-key-value').textContent = key;
  $('new-key').hidden = false;
  $('new-key-copy').focus();
}

$('new-key-copy').addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText($('new-key-value').textContent || '');
    setStatus('Key copied to the clipboard.');
  } catch {
    // Without clipboard permission: select it so the user can copy.
    const range = document.createRange();
    range.selectNodeContents($('new-key-value'));
    const selection = getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    setStatus('Select and copy the key (the clipboard is not available).');
  }
});

$('new-key-done').addEventListener('click', () => {
  $('new-key-value').textContent = '';
  $('new-key').hidden = true;
});

// Profile.

async function loadProfile() {
  const profile = await api('GET', '/v1/client/profile');
  $('profile-id').textContent = profile.client_id;
  $('profile-name').textContent = profile.name;
  $('profile-email').textContent = profile.email;
  $('profile-created').textContent = when(profile.created_at);
}

// API keys.

async function loadKeys() {
  const { api_keys: keys } = await api('GET', '/v1/client/api-keys');
  const body = $('keys-body');
  body.replaceChildren();
  for (const key of keys) {
    const row = document.createElement('tr');
    row.dataset.keyId = key.id;
    row.append(
      cell('td', key.prefix),
      cell('td', key.role),
      cell('td', when(key.created_at)),
      cell('td', when(key.last_used_at)),
      cell('td', when(key.expires_at)),
    );
    const action = document.createElement('td');
    const revoke = cell('button', 'Revoke', 'danger');
    revoke.type = 'button';
    revoke.setAttribute('aria-label', `Revoke key ${key.prefix}`);
    revoke.addEventListener('click', () => askRevoke(key));
    action.append(revoke);
    row.append(action);
    body.append(row);
  }
}

function askRevoke(key) {
  revoking = key.id;
  $('revoke-question').textContent =
    `Revoke key ${key.prefix} (${key.role})? Every gateway refuses it within a second; this cannot be undone.`;
  $('revoke-confirm').hidden = false;
  $('revoke-no').focus();
}

$('revoke-no').addEventListener('click', () => {
  revoking = null;
  $('revoke-confirm').hidden = true;
});

$('revoke-yes').addEventListener('click', async () => {
  const id = revoking;
  revoking = null;
  $('revoke-confirm').hidden = true;
  if (!id) return;
  try {
    await api('DELETE', `/v1/client/api-keys/${encodeURIComponent(id)}`);
    setStatus('Key revoked.');
    await loadKeys();
  } catch (error) {
    showError(error);
  }
});

$('rotate-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(null);
  try {
    const grace = Number(/** @type {HTMLInputElement} */ ($('rotate-grace')).value);
    const rotated = await api('POST', '/v1/client/api-keys/rotate', { grace_seconds: grace });
    showNewKey(rotated.key);
    const previous = rotated.previous_key
      ? ` The previous key works until ${when(rotated.previous_key.expires_at)}.`
      : '';
    setStatus(`New primary key ${rotated.prefix}.${previous}`);
    await loadKeys();
  } catch (error) {
    showError(error);
  }
});

// Whitelists: the API checks every entry and saves the whole list or nothing.

const lines = (id) =>
  /** @type {HTMLTextAreaElement} */ ($(id)).value.split('\n').map((l) => l.trim()).filter((l) => l !== '');

async function loadWhitelists() {
  const [ips, origins] = await Promise.all([api('GET', '/v1/client/ip-whitelist'), api('GET', '/v1/client/origin-whitelist')]);
  /** @type {HTMLTextAreaElement} */ ($('ip-list')).value = ips.cidrs.join('\n');
  /** @type {HTMLTextAreaElement} */ ($('origin-list')).value = origins.origins.join('\n');
  $('ip-errors').replaceChildren();
  $('origin-errors').replaceChildren();
}

/**
 * @param {string} field `cidrs` or `origins`
 * @param {string} path
 * @param {string} listId
 * @param {string} errorsId
 * @param {string} what
 */
async function saveWhitelist(field, path, listId, errorsId, what) {
  const entries = lines(listId);
  const errors = $(errorsId);
  errors.replaceChildren();
  try {
    const saved = await api('PUT', path, { [field]: entries });
    /** @type {HTMLTextAreaElement} */ ($(listId)).value = saved[field].join('\n');
    setStatus(`${what} saved (${saved[field].length} entries).`);
  } catch (error) {
    const match = error instanceof CaasError && error.field ? /\[(\d+)\]/.exec(error.field) : null;
    const item = document.createElement('li');
    if (match) {
      const index = Number(match[1]);
      item.textContent = `Entry ${index + 1} ("${entries[index] ?? ''}"): ${error.message} (${error.code}). Nothing was saved.`;
    } else {
      item.textContent = `${describe(error)}. Nothing was saved.`;
    }
    errors.append(item);
    /** @type {HTMLTextAreaElement} */ ($(listId)).focus();
  }
}

$('ip-form').addEventListener('submit', (event) => {
  event.preventDefault();
  saveWhitelist('cidrs', '/v1/client/ip-whitelist', 'ip-list', 'ip-errors', 'IP whitelist');
});

$('origin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  saveWhitelist('origins', '/v1/client/origin-whitelist', 'origin-list', 'origin-errors', 'Origin whitelist');
});

// Quotas.

const QUOTAS = ['per_key', 'per_user', 'per_tenant'];

async function loadQuotas() {
  const limits = await api('GET', '/v1/client/rate-limits');
  for (const quota of QUOTAS) {
    for (const part of ['rate', 'burst']) {
      const input = /** @type {HTMLInputElement} */ ($(`q-${quota}-${part}`));
      input.value = String(limits[quota][part]);
      if (limits.maximums) input.max = String(limits.maximums[quota][part]);
    }
  }
  $('quota-errors').replaceChildren();
}

$('quotas-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = {};
  for (const quota of QUOTAS) {
    body[quota] = {
      rate: Number(/** @type {HTMLInputElement} */ ($(`q-${quota}-rate`)).value),
      burst: Number(/** @type {HTMLInputElement} */ ($(`q-${quota}-burst`)).value),
    };
  }
  $('quota-errors').replaceChildren();
  try {
    await api('PUT', '/v1/client/rate-limits', body);
    setStatus('Quotas saved; gateways apply them within a second.');
  } catch (error) {
    const field = error instanceof CaasError && error.field ? `${error.field}: ` : '';
    $('quota-errors').append(cell('li', `${field}${describe(error)}. Nothing was saved.`));
  }
});

// Activity.

async function loadActivity(before) {
  const query = before ? `?limit=20&before=${before}` : '?limit=20';
  const page = await api('GET', `/v1/client/audit-log${query}`);
  const body = $('activity-body');
  body.replaceChildren();
  for (const entry of page.entries) {
    const row = document.createElement('tr');
    row.append(
      cell('td', when(entry.created_at)),
      cell('td', entry.action),
      cell('td', entry.actor ?? '—'),
      cell('td', entry.ip ?? '—'),
      cell('td', entry.detail ? JSON.stringify(entry.detail) : '', 'detail'),
    );
    body.append(row);
  }
  const older = /** @type {HTMLButtonElement} */ ($('activity-older'));
  older.disabled = page.next_before === null;
  older.dataset.cursor = page.next_before === null ? '' : String(page.next_before);
  /** @type {HTMLButtonElement} */ ($('activity-newest')).disabled = !before;
}

$('activity-older').addEventListener('click', async () => {
  const cursor = Number($('activity-older').dataset.cursor);
  if (!cursor) return;
  activityCursors.push(cursor);
  try {
    await loadActivity(cursor);
  } catch (error) {
    showError(error);
  }
});

$('activity-newest').addEventListener('click', async () => {
  activityCursors = [null];
  try {
    await loadActivity(null);
  } catch (error) {
    showError(error);
  }
});

// Try it: a test end user, through caas-client.js.

function tryError(error) {
  $('try-error').textContent = error ? describe(error) : '';
}

function tryCounters() {
  $('try-connections').textContent = String(tryClient ? tryClient.connections : 0);
  $('try-refreshes').textContent = String(tryClient ? tryClient.refreshes : 0);
}

async function stopTry() {
  const client = tryClient;
  tryClient = null;
  conversation = null;
  if (client) {
    try {
      await client.logout();
    } catch {
      // The session may already be over (signed out everywhere).
    }
  }
  $('try-socket').textContent = 'not connected';
  $('try-messages').replaceChildren();
  tryCounters();
}

$('try-start-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  tryError(null);
  await stopTry();
  try {
    const name = /** @type {HTMLInputElement} */ ($('try-name')).value.trim();
    const ttl = /** @type {HTMLInputElement} */ ($('try-ttl')).value;
    const request = ttl ? { name, access_ttl_seconds: Number(ttl) } : { name };
    const session = await api('POST', '/v1/client/test-sessions', request);
    const client = new CaasClient({ session });
    tryClient = client;
    client.addEventListener('state', (e) => {
      const state = /** @type {CustomEvent} */ (e).detail;
      $('try-socket').textContent = state;
      // When the socket last opened and closed (for people and tests alike).
      if (state === 'open') document.body.dataset.socketOpenedAt = String(Date.now());
      if (state === 'closed') document.body.dataset.socketClosedAt = String(Date.now());
      tryCounters();
    });
    client.addEventListener('refreshed', () => tryCounters());
    client.addEventListener('error', (e) => tryError(/** @type {CustomEvent} */ (e).detail));
    client.addEventListener('ended', (e) => {
      $('try-socket').textContent = 'ended';
      tryError(/** @type {CustomEvent} */ (e).detail);
    });
    client.onMessage((frame) => {
      const item = document.createElement('li');
      item.textContent = `${frame.message.sender_id}: ${frame.message.body}`;
      $('try-messages').append(item);
    });
    client.connect();
    setStatus(`Test user ${session.user_id} signed in.`);
  } catch (error) {
    tryError(error);
  }
});

async function join(id) {
  if (!tryClient) throw new CaasError('no_session', 'start a test session first');
  conversation = id;
  /** @type {HTMLInputElement} */ ($('try-conversation')).value = id;
  await tryClient.subscribe(id);
  setStatus(`In conversation ${id}.`);
}

$('try-create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  tryError(null);
  try {
    if (!tryClient) throw new CaasError('no_session', 'start a test session first');
    const peer = /** @type {HTMLInputElement} */ ($('try-peer')).value.trim();
    const created = await tryClient.createConversation([`test:${peer}`], 'Console test');
    await join(created.id);
  } catch (error) {
    tryError(error);
  }
});

$('try-join-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  tryError(null);
  try {
    await join(/** @type {HTMLInputElement} */ ($('try-conversation')).value.trim());
  } catch (error) {
    tryError(error);
  }
});

$('try-send-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  tryError(null);
  const input = /** @type {HTMLInputElement} */ ($('try-message'));
  try {
    if (!tryClient || !conversation) throw new CaasError('no_conversation', 'create or join a conversation first');
    // Over HTTP, so the gateway's answer (an Origin refusal, a quota) shows here.
    await tryClient.postMessage(conversation, input.value);
    input.value = '';
  } catch (error) {
    tryError(error);
  }
});

addEventListener('hashchange', route);
route();
