"""Schemathesis hooks for CAAS services reached directly (not through Envoy).

Each request gets the gateway's signed context for the caller the route
expects, signed with SERVICE_SECRET exactly as ext-authz signs it
(rules/src/context.rs): HMAC-SHA256 over length-prefixed fields, base64url.
The internal routes get `authorization: Service <SERVICE_SECRET>`.

Environment: CAAS_SERVICE_SECRET, CAAS_TENANT, CAAS_KEY_ID,
CAAS_DASHBOARD_USER, CAAS_DASHBOARD_SESSION, CAAS_END_USER, CAAS_END_SESSION,
CAAS_CLIENT_IP (default 127.0.0.1) (tests/e2e/openapi.rs sets them from a tenant it onboarded through the
gateway). Used as: SCHEMATHESIS_HOOKS=hooks st run …, with this directory
on PYTHONPATH.
"""

import base64
import hashlib
import hmac
import os
import struct
import time
import uuid

import schemathesis



def _env(name):
    return os.environ.get(name, "")


def sign(method, tenant, user, session, auth_type, key_id, client_ip, request_id, expires, ts):
    mac = hmac.new(_env("CAAS_SERVICE_SECRET").encode(), digestmod=hashlib.sha256)
    for field in ["caas-context-v1", method, tenant, user, session, auth_type, key_id, client_ip,
                  request_id, expires, str(ts)]:
        data = field.encode()
        mac.update(struct.pack(">I", len(data)))
        mac.update(data)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def caller_for(path):
    """(auth type, tenant, user, session, key id) the route expects."""
    tenant = _env("CAAS_TENANT")
    if path.startswith("/v1/conversations") or path.startswith("/v1/messages"):
        return ("jwt", tenant, _env("CAAS_END_USER"), _env("CAAS_END_SESSION"), "")
    if path.endswith("/client/register") or path.endswith("/client/login") \
            or path.endswith("/auth/refresh") or path.endswith("/auth/logout"):
        return ("anonymous", "", "", "", "")
    if "/sdk/" in path:
        return ("api_key", tenant, "", "", _env("CAAS_KEY_ID"))
    if "/client/" in path:
        return ("dashboard", tenant, _env("CAAS_DASHBOARD_USER"), _env("CAAS_DASHBOARD_SESSION"), "")
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.headers is None:
        case.headers = {}
    headers = case.headers
    path = case.operation.path
    if "/internal/" in path:
        headers["authorization"] = "Service " + _env("CAAS_SERVICE_SECRET")
        return
    caller = caller_for(path)
    if caller is None:
        return
    auth_type, tenant, user, session, key_id = caller
    method = case.method.upper()
    client_ip = _env("CAAS_CLIENT_IP") or "127.0.0.1"
    request_id = "fuzz-" + uuid.uuid4().hex
    expires = str(int(time.time()) + 900) if auth_type == "jwt" else ""
    ts = int(time.time())
    headers.update({
        "x-caas-tenant-id": tenant,
        "x-caas-user-id": user,
        "x-caas-session-id": session,
        "x-caas-auth-type": auth_type,
        "x-caas-key-id": key_id,
        "x-caas-client-ip": client_ip,
        "x-request-id": request_id,
        "x-caas-token-expires-at": expires,
        "x-caas-context-ts": str(ts),
        "x-caas-context-sig": sign(method, tenant, user, session, auth_type, key_id, client_ip,
                                   request_id, expires, ts),
    })
