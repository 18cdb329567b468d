"""The session state machine fed command bytes directly (no socket), checked against a model with hypothesis."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import argon2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.auth.authenticator import Authenticator
from appliance.auth.directory import Directory
from appliance.pop3.multiline import encode_lines, encode_message, top_lines
from appliance.pop3.session import Pop3Session, State, uidl_of
from appliance.store import MailStore

HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
MESSAGES = [
    b"Subject: a\r\n\r\nfirst\r\n",
    b"Subject: b\r\n\r\n.starts with a dot\r\n\r\n..\r\n",
    b"Subject: c\r\nX: y\r\n\r\none\r\ntwo\r\nthree\r\n",
]

numbers = st.integers(min_value=0, max_value=len(MESSAGES) + 1)
operations = st.lists(st.one_of(
    st.tuples(st.sampled_from(["STAT", "RSET", "NOOP"])),
    st.tuples(st.sampled_from(["LIST", "UIDL"]), st.none() | numbers),
    st.tuples(st.sampled_from(["RETR", "DELE"]), numbers),
    st.tuples(st.just("TOP"), numbers, st.integers(min_value=0, max_value=5)),
), max_size=25)


class Model:
    """What RFC 1939 says the maildrop looks like from inside the session."""

    def __init__(self, uids: list[int], uidvalidity: int) -> None:
        self.uids, self.uidvalidity = uids, uidvalidity
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()

    def valid(self, n: int | None) -> bool:
        return n is not None and 1 <= n <= len(MESSAGES) and n not in self.deleted

    def live(self) -> list[int]:
        return [n for n in range(1, len(MESSAGES) + 1) if n not in self.deleted]

    def expect(self, op: tuple) -> bytes | None:
        """Expected reply bytes (None: only "+OK" prefix is checked); updates the model."""
        name, *args = op
        n = args[0] if args else None
        if name in ("RETR", "DELE", "TOP") or (name in ("LIST", "UIDL") and n is not None):
            if not self.valid(n):
                return b"-ERR"
        if name == "STAT":
            live = self.live()
            return f"+OK {len(live)} {sum(len(MESSAGES[i - 1]) for i in live)}\r\n".encode()
        if name == "DELE":
            self.deleted.add(n)
            return None
        if name == "RSET":
            self.deleted.clear()
            return None
        if name == "RETR":
            self.retrieved.add(n)
            return f"+OK {len(MESSAGES[n - 1])} octets\r\n".encode() + encode_message(MESSAGES[n - 1])
        if name == "TOP":
            return b"+OK top of message follows\r\n" + encode_lines(top_lines(MESSAGES[n - 1], args[1]))
        if name == "LIST" and n is None:
            body = encode_lines([f"{i} {len(MESSAGES[i - 1])}".encode() for i in self.live()])
            return f"+OK {len(self.live())} messages\r\n".encode() + body
        if name == "UIDL" and n is not None:
            return f"+OK {n} {uidl_of(self.uidvalidity, self.uids[n - 1])}\r\n".encode()
        return None


async def _run(folder: Path, ops: list[tuple]) -> None:
    directory = Directory(folder / "directory.sqlite", config_domains=["example.org"], password_hasher=HASHER)
    directory.add_user("alice@example.org", "pw")
    authenticator = Authenticator(directory)
    store = MailStore(folder / "mail")
    try:
        uids = [store.deliver("alice@example.org", m) for m in MESSAGES]
        account = store.account("alice@example.org")
        model = Model(uids, account.folder("INBOX").uidvalidity)
        session = Pop3Session(store=store, authenticator=authenticator, client_ip="127.0.0.1",
                              hostname="pop.example.org", tls_active=True, tls_available=True,
                              plaintext_auth_allowed=False)
        assert (await session.handle_line(b"USER alice@example.org\r\n")).data.startswith(b"+OK")
        assert (await session.handle_line(b"PASS pw\r\n")).data.startswith(b"+OK")
        assert session.state is State.TRANSACTION
        for op in ops:
            line = " ".join(str(a) for a in op if a is not None).encode() + b"\r\n"
            reply = (await session.handle_line(line)).data
            expected = model.expect(op)
            if expected is None:
                assert reply.startswith(b"+OK"), (op, reply)
            elif expected == b"-ERR":
                assert reply.startswith(b"-ERR ") and reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1, op
            else:
                assert reply == expected, (op, reply)
        quit_reply = await session.handle_line(b"QUIT\r\n")
        assert quit_reply.close and quit_reply.data.startswith(b"+OK")
        remaining = {m.uid: m.flags for m in account.messages("INBOX")}
        assert sorted(remaining) == [uids[n - 1] for n in model.live()]
        for n in model.live():
            assert ("\\Seen" in remaining[uids[n - 1]]) == (n in model.retrieved)
    finally:
        authenticator.close()
        store.close()
        directory.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_transaction_state_matches_the_rfc_model(ops):
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(_run(Path(folder), ops))


def test_commands_refused_in_the_wrong_state_and_plaintext_refused(tmp_path):
    async def scenario() -> list[bytes]:
        directory = Directory(tmp_path / "d.sqlite", config_domains=["example.org"], password_hasher=HASHER)
        authenticator = Authenticator(directory)
        store = MailStore(tmp_path / "mail")
        try:
            session = Pop3Session(store=store, authenticator=authenticator, client_ip="192.0.2.1",
                                  hostname="pop.example.org", tls_active=False, tls_available=True,
                                  plaintext_auth_allowed=False)
            replies = [(await session.handle_line(line)).data for line in
                       (b"RETR 1\r\n", b"USER a@example.org\r\n", b"AUTH PLAIN AGEAYg==\r\n", b"NOOP\r\n",
                        b"STLS\r\n")]
            session.tls_started()
            replies.append((await session.handle_line(b"STLS\r\n")).data)
            return replies
        finally:
            authenticator.close()
            store.close()
            directory.close()

    replies = asyncio.run(scenario())
    assert replies[0] == b"-ERR RETR is not allowed before login\r\n"
    assert replies[1].startswith(b"-ERR [AUTH] plaintext authentication is refused")
    assert replies[2].startswith(b"-ERR [AUTH] plaintext authentication is refused")
    assert replies[3] == b"-ERR NOOP is not allowed before login\r\n"
    assert replies[4] == b"+OK begin TLS negotiation\r\n"
    assert replies[5] == b"-ERR TLS is already active\r\n"
