"""Accounts, tokens, chat sessions and their messages."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ds2a.sim.config import SimConfig

if TYPE_CHECKING:
    from ds2a.sim.frames import Compiled
    from ds2a.sim.generation import Generation


@dataclass(eq=False, slots=True)
class Account:
    key: str
    user_id: str
    password: str | None  # None: token-only account (pre-seeded), cannot log in
    email: str | None = None
    mobile: str | None = None
    area_code: str | None = None
    token: str | None = None
    aliases: set[str] = field(default_factory=set)  # identifiers faults may name it by
    mute_until: float | None = None
    generation: Generation | None = None  # the one generation DeepSeek allows per account
    active: int = 0  # completion/continue requests in their streaming phase
    banned: bool = False  # every login answers USER_IS_BANNED (§16.3)
    device_refused: bool = False  # every password login answers RISK_DEVICE_DETECTED (§16.3)

    def muted(self, now: float) -> bool:
        return self.mute_until is not None and now < self.mute_until

    def user_json(self, now: float) -> dict[str, Any]:
        muted = self.muted(now)
        return {
            "id": self.user_id,
            "token": self.token,
            "email": _mask_email(self.email),
            "mobile_number": _mask_mobile(self.mobile),
            "area_code": self.area_code,
            "status": 0,
            "id_profile": None,
            "id_profiles": [],
            "chat": {"is_muted": int(muted), "mute_until": self.mute_until if muted else None},
        }


@dataclass(eq=False, slots=True)
class Message:
    """One assistant message: what it will say and how far it has got."""

    session: Session
    request_id: int
    response_id: int
    thinking: bool
    search: bool
    model_type: str
    compiled: Compiled
    inserted_at: float
    first_turn: bool
    delay: float
    pos: int = 0  # steps generated (delivered, plus a few a cut stream never delivered)
    tokens: int = 0
    status: str = "WIP"
    elapsed: dict[int, float] = field(default_factory=dict)  # THINK block -> elapsed_secs
    generation: Generation | None = None


@dataclass(eq=False, slots=True)
class Session:
    id: str
    account: Account
    inserted_at: float
    next_id: int = 1
    model_type: str | None = None
    turns: int = 0
    deleted: bool = False
    messages: dict[int, Message] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id, "seq_id": abs(hash(self.id)) % 1_000_000_000, "agent": "chat",
            "model_type": "default", "title": None, "title_type": "WIP", "version": 0,
            "current_message_id": None, "pinned": False,
            "inserted_at": round(self.inserted_at, 3), "updated_at": round(self.inserted_at, 3),
        }


class AccountStore:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._by_login: dict[str, Account] = {}
        self._by_token: dict[str, Account] = {}
        self.sessions: dict[str, Session] = {}
        for token in config.tokens:
            self.add(token=token)

    # --- login and tokens --------------------------------------------------------

    def login(self, email: str | None, mobile: str | None, area_code: str | None, password: str) -> Account | None:
        """The account with a valid token, or None for wrong credentials."""
        key = _login_key(email, mobile)
        if key is None:
            return None
        account = self._by_login.get(key)
        if account is None:
            expected = self.config.accounts.get((email or mobile or "").strip(), self.config.password)
            if password != expected:
                return None
            account = self._create(key, password, email=email, mobile=mobile, area_code=area_code)
        elif account.password is None or password != account.password:
            return None
        if account.token is None:
            self._grant(account, _new_token())
        return account

    def add(self, email: str | None = None, mobile: str | None = None, password: str | None = None,
            token: str | None = None) -> Account:
        key = _login_key(email, mobile) or f"token:{token or _new_token()}"
        account = self._by_login.get(key)
        if account is None:
            account = self._create(key, password if password is not None else self.config.password,
                                   email=email, mobile=mobile, area_code=None)
            if email is None and mobile is None:
                account.password = None
        elif password is not None:
            account.password = password
        if token is not None and token != account.token:
            self.revoke(account.token)
            self._grant(account, token)
        elif account.token is None:
            self._grant(account, _new_token())
        return account

    def authenticate(self, token: str) -> Account | None:
        return self._by_token.get(token)

    def revoke(self, token: str | None) -> bool:
        """Invalidate a token; the account's next login gets a new one."""
        account = self._by_token.pop(token, None) if token else None
        if account is None:
            return False
        account.token = None
        return True

    def find(self, ident: str) -> Account | None:
        """An account by email, mobile or any token it has held."""
        return self._by_token.get(ident) or next(
            (a for a in self._by_login.values() if ident in a.aliases), None
        )

    def accounts(self) -> list[Account]:
        return list(self._by_login.values())

    # --- sessions ----------------------------------------------------------------

    def create_session(self, account: Account) -> Session:
        session = Session(str(uuid.uuid4()), account, time.time())
        self.sessions[session.id] = session
        return session

    def session_of(self, account: Account, session_id: Any) -> Session | None:
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None or session.deleted or session.account is not account:
            return None
        return session

    def delete_session(self, account: Account, session_id: Any) -> bool:
        session = self.session_of(account, session_id)
        if session is None:
            return False
        session.deleted = True
        del self.sessions[session.id]
        return True

    # --- internals ----------------------------------------------------------------

    def _create(self, key: str, password: str | None, *, email: str | None, mobile: str | None,
                area_code: str | None) -> Account:
        account = Account(key, uuid.uuid4().hex, password, email=email, mobile=mobile, area_code=area_code)
        account.aliases.update(x for x in (email, mobile) if x)
        config = self.config
        if account.aliases & set(config.muted_at_login):
            account.mute_until = time.time() + config.mute_seconds
        if account.aliases & set(config.banned):
            account.banned = True
        self._by_login[key] = account
        return account

    def _grant(self, account: Account, token: str) -> None:
        account.token = token
        account.aliases.add(token)
        self._by_token[token] = account


def _login_key(email: str | None, mobile: str | None) -> str | None:
    if email and email.strip():
        return "email:" + email.strip().lower()
    if mobile and mobile.strip():
        return "mobile:" + mobile.strip()
    return None


def _new_token() -> str:
    return secrets.token_urlsafe(48)


def _mask_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return email
    name, domain = email.split("@", 1)
    return f"{name[:1]}***{name[-1:] if len(name) > 1 else ''}@{domain}"


def _mask_mobile(mobile: str | None) -> str | None:
    if not mobile:
        return None
    return mobile[:3] + "*" * max(0, len(mobile) - 5) + mobile[-2:]
