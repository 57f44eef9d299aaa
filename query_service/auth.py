"""Who is asking: bearer token → principal, and what that principal may see.

Operator tokens see every event. An account token sees an event when its cPanel user is one of the
token's users, or its sender or recipient domain is one of the token's domains (cPanel shows an account
both the mail it sends and the mail delivered to its domains). Everything else answers 404, as if the
message did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from query_service.tokens import TokenRecord, TokenStore

bearer_scheme = HTTPBearer(auto_error=False, description="a token from `trackdelivery tokens create`")

_UNAUTHORISED_HEADERS = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    operator: bool
    users: frozenset[str]
    domains: frozenset[str]

    @classmethod
    def from_record(cls, record: TokenRecord) -> Principal:
        return cls(record.token_id, record.operator, record.users, record.domains)

    def sees(self, cpanel_user: str | None, sender_domain: str | None, recipient_domain: str | None) -> bool:
        if self.operator:
            return True
        if cpanel_user is not None and cpanel_user in self.users:
            return True
        return any(d is not None and d.lower() in self.domains for d in (sender_domain, recipient_domain))

    def sees_sender_side(self, cpanel_user: str | None, sender_domain: str | None) -> bool:
        """True when the principal owns the message as its sender (then it sees every recipient)."""
        if self.operator:
            return True
        if cpanel_user is not None and cpanel_user in self.users:
            return True
        return sender_domain is not None and sender_domain.lower() in self.domains


async def require_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required", _UNAUTHORISED_HEADERS)
    tokens: TokenStore = request.app.state.tokens
    record = await tokens.verify(credentials.credentials)
    if record is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked token", _UNAUTHORISED_HEADERS)
    return Principal.from_record(record)
