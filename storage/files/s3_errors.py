"""S3's errors in plain words: which bucket, what failed and which AWS_* variable to check.

obstore reports S3's answers as text (an XML `<Code>`, an HTTP status, a connector's error);
these are what an operator sees instead, never holding a secret.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from storage.files.store import FileMissing, FileStoreError

if TYPE_CHECKING:
    from storage.files.s3 import S3Files


def safe_url(url: str) -> str:
    """`url` without user:password@, query or fragment (so it can be shown)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def explain(store: S3Files, exc: BaseException, action: str, key: str | None) -> Exception:
    """obstore's error `exc` while trying to `action` as FileMissing (`key` given, object absent) or
    FileStoreError in plain words: what failed, which variable to check; never a secret."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    text = store.scrub(str(exc))
    found = re.search(r"<Code>([^<]+)</Code>", text)
    code = found.group(1) if found else ""
    where = store.describe()
    if code == "NoSuchBucket":
        return FileStoreError(
            f"The bucket '{store.bucket}' does not exist ({where}). Create it, or correct the bucket "
            "name in PAWTRAIT_FILES_URL."
        )
    if isinstance(exc, (FileNotFoundError, NotFoundError)):
        if key is not None:
            return FileMissing(key, where)
        return FileStoreError(f"{where}: could not {action}: not found ({code or 'HTTP 404'}).")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
        return FileStoreError(
            f"The bucket '{store.bucket}' is in another region than the one used ({store.region or 'us-east-1'}): "
            "set AWS_REGION to the bucket's region."
        )
    denied = {
        "InvalidAccessKeyId": "the server does not know the access key in AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY does not match AWS_ACCESS_KEY_ID",
        "ExpiredToken": "the temporary credentials (AWS_SESSION_TOKEN) have expired",
        "InvalidToken": "AWS_SESSION_TOKEN is not valid",
        "AccessDenied": f"the key is not allowed to {action}",
        "AllAccessDisabled": "all access to this bucket has been disabled",
        "AccountProblem": "the account has a problem (billing or suspension)",
    }
    if (
        isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError))
        or code in denied
        or re.search(r"\b(401|403) (Unauthorized|Forbidden)\b", text)
    ):
        reason = denied.get(code, code or "access denied")
        return FileStoreError(
            f"Access to the bucket '{store.bucket}' was denied ({where}): {reason}. Check AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if used), and that this key may read, write, list "
            "and delete objects in that bucket."
        )
    lowered = text.lower()
    if "/latest/api/token" in text or "169.254.169.254" in text or "credential" in lowered:
        return FileStoreError(
            f"No AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an "
            "instance role provides them)."
        )
    if isinstance(exc, (ConnectionError, TimeoutError)) or any(
        marker in lowered for marker in ("error sending request", "tcp connect error", "dns error", "timed out")
    ):
        if "dns error" in lowered or "lookup address" in lowered:
            reason = "the host name could not be resolved"
        elif "connection refused" in lowered or "connectionrefused" in lowered:
            reason = "the connection was refused: nothing listens at that address and port"
        elif "timed out" in lowered or "timeout" in lowered:
            reason = "the connection timed out"
        elif any(marker in lowered for marker in ("invalidcontenttype", "tls", "certificate", "ssl")):
            reason = "the TLS connection failed (is the endpoint plain http://, or its certificate untrusted?)"
        else:
            reason = "the connection failed"
        target = f"the endpoint {safe_url(store.endpoint)}" if store.endpoint else "AWS S3"
        return FileStoreError(
            f"Could not reach {target} to {action} in the bucket '{store.bucket}': {reason}. Check "
            "AWS_ENDPOINT_URL (http:// or https://, host and port), that the server is running, and that "
            "this machine can reach it."
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return FileStoreError(f"{where}: could not {action}: {code or first_line}")
