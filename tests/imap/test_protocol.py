"""Byte-level protocol behaviour: literals, limits, malformed input, exact responses (RFC 3501 examples)."""

from __future__ import annotations

import socket
import ssl

from tests.imap.conftest import ImapServer, RawClient

MSG = (b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\nFrom: Terry Gray <gray@cac.washington.edu>\r\n"
       b"Subject: IMAP4rev1 WG mtg summary and minutes\r\nTo: imap@cac.washington.edu\r\n"
       b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
       b"Message-Id: <B27397-0100000@cac.washington.edu>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n")


def test_malformed_commands_get_bad_and_the_session_survives(raw: RawClient) -> None:
    for junk in (b"", b"   ", b"*", b"a", b"a NOSUCH", b"a FETCH", b"a LOGIN \"x", b"\xff\xfe BOGUS",
                 b"a SELECT", b"a LOGIN {2}"):
        raw.send(junk + b"\r\n")
        if junk == b"a LOGIN {2}":
            assert raw.line() == b"+ OK\r\n"
            raw.send(b"xy\r\n")
        reply = raw.line()
        assert b" BAD " in reply, (junk, reply)
    raw.login()
    assert raw.command("n1", "NOOP")[-1].startswith(b"n1 OK")


def test_synchronising_and_non_synchronising_literals(raw: RawClient) -> None:
    raw.send(b'a1 LOGIN {17}\r\n')
    assert raw.line() == b"+ OK\r\n"
    raw.send(b'alice@example.org {11+}\r\ns3cret pass\r\n')
    assert raw.line().startswith(b"a1 OK")


def test_too_big_synchronising_literal_is_refused_without_reading_it(raw: RawClient) -> None:
    raw.login()
    reply = raw.command("a2", "APPEND INBOX {999999999999}")
    assert reply[-1].startswith(b"a2 NO [TOOBIG]")
    assert raw.command("a3", "NOOP")[-1].startswith(b"a3 OK")


def test_too_big_non_synchronising_literal_ends_the_connection(raw: RawClient) -> None:
    raw.login()
    raw.send(b"a2 APPEND INBOX {999999999999+}\r\nxxxx")
    assert raw.line().startswith(b"* BYE")
    assert raw.line() == b""


def test_endless_line_is_cut_off(raw: RawClient) -> None:
    try:
        raw.send(b"a1 LOGIN " + b"x" * 200_000)
    except OSError:
        pass
    assert raw.line().startswith(b"* BYE Line too long")


def test_rfc3501_fetch_example_responses(imap_server: ImapServer) -> None:
    imap_server.deliver(MSG)
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    client.command("s", "SELECT INBOX")
    reply = client.command("f", "FETCH 1 (ENVELOPE BODY RFC822.SIZE)")
    assert reply[0] == (
        b'* 1 FETCH (ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        b'"<B27397-0100000@cac.washington.edu>") BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 55 1) '
        b'RFC822.SIZE ' + str(len(MSG)).encode() + b')\r\n')
    reply = client.command("g", "FETCH 1 (BODY[HEADER.FIELDS (date from)] FLAGS)")
    assert reply[0] == (b"* 1 FETCH (BODY[HEADER.FIELDS (DATE FROM)] {91}\r\n"
                        b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
                        b"From: Terry Gray <gray@cac.washington.edu>\r\n\r\n"
                        b" FLAGS (\\Seen \\Recent))\r\n")
    reply = client.command("h", "UID FETCH 1 (BODY.PEEK[TEXT]<0.5> INTERNALDATE)")
    assert reply[0].startswith(b"* 1 FETCH (UID 1 BODY[TEXT]<0> {5}\r\nHello INTERNALDATE \"")
    client.close()


def test_select_response_shape(imap_server: ImapServer) -> None:
    imap_server.deliver(MSG, flags=["\\Seen"])
    imap_server.deliver(MSG, flags=["$Label1"])
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    reply = client.command("s", "SELECT INBOX")
    validity = imap_server.store.account("alice@example.org").folder("INBOX").uidvalidity
    assert reply == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] Flags permitted.\r\n",
        b"* 2 EXISTS\r\n",
        b"* 2 RECENT\r\n",
        b"* OK [UNSEEN 2] First unseen.\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % validity,
        b"* OK [UIDNEXT 3] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 3] Highest\r\n",
        b"* OK [MAILBOXID (F%x)] Ok\r\n" % validity,  # OBJECTID (RFC 8474 §4.2)
        b"s OK [READ-WRITE] Select completed.\r\n",
    ]
    # \Recent went to this session only (RFC 3501 §2.3.2)
    other = RawClient(imap_server.host, imap_server.port)
    other.login()
    assert b"* 0 RECENT\r\n" in other.command("e", "EXAMINE INBOX")
    assert other.command("x", "STORE 1 +FLAGS (\\Flagged)")[-1].startswith(b"x NO [READ-ONLY]")
    client.close()
    other.close()


def test_condstore_unchangedsince_and_changedsince(imap_server: ImapServer) -> None:
    for _ in range(3):
        imap_server.deliver(MSG)
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    reply = client.command("s", "SELECT INBOX (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ 4] Highest\r\n" in reply
    reply = client.command("a", "STORE 1 +FLAGS (\\Flagged)")
    assert reply[0] == b"* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (5))\r\n"
    reply = client.command("b", "STORE 1:2 (UNCHANGEDSINCE 4) +FLAGS (\\Seen)")
    assert reply[-1] == b"b OK [MODIFIED 1] Conditional store failed.\r\n"
    assert reply[0] == b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (6))\r\n"
    reply = client.command("c", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4)")
    assert reply[:-1] == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (5))\r\n",
                          b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (6))\r\n"]
    reply = client.command("d", "SEARCH MODSEQ 6")
    assert reply[0] == b"* SEARCH 2 (MODSEQ 6)\r\n"
    client.close()


def test_esearch_return_options(imap_server: ImapServer) -> None:
    for _ in range(5):
        imap_server.deliver(MSG)
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    client.command("s", "SELECT INBOX")
    reply = client.command("x", "UID SEARCH RETURN (MIN MAX COUNT ALL) 2:4")
    assert reply[0] == b'* ESEARCH (TAG "x") UID MIN 2 MAX 4 ALL 2:4 COUNT 3\r\n'
    client.close()


def test_starttls_discards_pipelined_plaintext(strict_imap_server: ImapServer) -> None:
    sock = socket.create_connection((strict_imap_server.host, strict_imap_server.port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    # RFC 2595 §3.1 / CVE-2011-0411 style injection: a command pipelined after STARTTLS
    sock.sendall(b"s STARTTLS\r\ninjected LOGIN alice@example.org x\r\n")
    assert f.readline().startswith(b"s OK")
    tls = strict_imap_server.client_context().wrap_socket(sock, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"n NOOP\r\n")
    assert tf.readline() == b"n OK NOOP completed.\r\n"  # nothing answered to "injected"
    tls.close()


def test_idle_needs_done(imap_server: ImapServer) -> None:
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    client.command("s", "SELECT INBOX")
    client.send(b"i IDLE\r\n")
    assert client.line().startswith(b"+ ")
    client.send(b"FETCH 1 FLAGS\r\n")
    assert client.line() == b"i BAD Expected DONE\r\n"
    assert client.command("n", "NOOP")[-1].startswith(b"n OK")
    client.close()


def test_tls_listener_speaks_tls_only(strict_imap_server: ImapServer) -> None:
    context = strict_imap_server.client_context()
    with socket.create_connection((strict_imap_server.host, strict_imap_server.tls_port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.recv(200).startswith(b"* OK [CAPABILITY IMAP4rev1")
    with socket.create_connection((strict_imap_server.host, strict_imap_server.tls_port), timeout=10) as sock:
        sock.sendall(b"a LOGIN x y\r\n")
        try:
            data = sock.recv(100)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        assert not data.startswith(b"* OK")


def test_qresync_resynchronisation(imap_server: ImapServer) -> None:
    for _ in range(4):
        imap_server.deliver(MSG)
    validity = imap_server.store.account("alice@example.org").folder("INBOX").uidvalidity
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    assert client.command("q", "SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"q BAD")  # not enabled
    assert client.command("e", "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    reply = client.command("s", "SELECT INBOX")
    known_modseq = int(next(r for r in reply if b"HIGHESTMODSEQ" in r).split(b" ")[3].rstrip(b"]"))
    # another client changes flags and expunges while we are away
    other = RawClient(imap_server.host, imap_server.port)
    other.login()
    other.command("s", "SELECT INBOX")
    other.command("a", "STORE 1 +FLAGS (\\Flagged)")
    other.command("b", "STORE 2:3 +FLAGS (\\Deleted)")
    reply = client.command("n", "NOOP")
    other.command("c", "EXPUNGE")
    reply = client.command("n2", "NOOP")
    assert b"* VANISHED 2:3\r\n" in reply  # expunges are reported as VANISHED once QRESYNC is on
    client.command("u", "UNSELECT")
    reply = client.command("r", f"SELECT INBOX (QRESYNC ({validity} {known_modseq} 1:4))")
    assert b"* VANISHED (EARLIER) 2:3\r\n" in reply
    assert any(line.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (") for line in reply)
    reply = client.command("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known_modseq} VANISHED)")
    assert reply[0] == b"* VANISHED (EARLIER) 2:3\r\n"
    assert reply[1].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (")
    client.close()
    other.close()


def test_huge_sequence_sets_are_cheap(raw: RawClient, imap_server: ImapServer) -> None:
    imap_server.deliver(MSG)
    raw.login()
    raw.command("s", "SELECT INBOX")
    assert raw.command("a", "FETCH 1:4294967295 FLAGS")[-1].startswith(b"a BAD")
    assert raw.command("b", "UID FETCH 1:4294967295 FLAGS")[-1].startswith(b"b OK")
    assert raw.command("c", "SEARCH 1:4294967295")[-1].startswith(b"c OK")
    assert raw.command("d", "UID STORE 1:4294967295 +FLAGS (\\Seen)")[-1].startswith(b"d OK")
    assert raw.command("e", "UID COPY 1:4294967295 Trash")[-1].startswith(b"e OK")
    assert raw.command("f", "UID EXPUNGE 1:4294967295")[-1].startswith(b"f OK")


def test_authenticate_plain_forms(imap_server: ImapServer) -> None:
    import base64

    good = base64.b64encode(b"\0alice@example.org\0s3cret pass").decode()
    client = RawClient(imap_server.host, imap_server.port)
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.line() == b"+ \r\n"
    client.send(b"*\r\n")
    assert client.line().startswith(b"a BAD")  # RFC 3501 §6.2.2: cancelled
    client.send(b"b AUTHENTICATE PLAIN\r\n")
    assert client.line() == b"+ \r\n"
    client.send(b"!!notbase64\r\n")
    assert client.line().startswith(b"b BAD")
    assert client.command("c", "AUTHENTICATE CRAM-MD5")[-1].startswith(b"c NO")
    bad = base64.b64encode(b"\0alice@example.org\0wrong").decode()
    assert client.command("d", f"AUTHENTICATE PLAIN {bad}")[-1].startswith(b"d NO [AUTHENTICATIONFAILED]")
    assert client.command("e", f"AUTHENTICATE PLAIN {good}")[-1].startswith(b"e OK")  # RFC 4959 SASL-IR
    assert client.command("f", "LOGIN x y")[-1].startswith(b"f BAD")  # already authenticated
    client.close()


def test_authenticate_refused_before_tls(strict_imap_server: ImapServer) -> None:
    import base64

    good = base64.b64encode(b"\0alice@example.org\0s3cret pass").decode()
    client = RawClient(strict_imap_server.host, strict_imap_server.port)
    assert b"LOGINDISABLED" in client.greeting and b"AUTH=PLAIN" not in client.greeting
    assert client.command("a", f"AUTHENTICATE PLAIN {good}")[-1].startswith(b"a NO [PRIVACYREQUIRED]")
    assert strict_imap_server.authenticator.attempts == []  # the password never reached the authenticator
    client.close()


def test_search_sets_after_expunge(raw: RawClient, imap_server: ImapServer) -> None:
    """Sequence sets and UID sets once the seq=UID mapping is broken (cases as imaptest's search-sets)."""
    for _ in range(6):
        imap_server.deliver(MSG)
    raw.login()
    raw.command("s", "SELECT INBOX")
    raw.command("d", "STORE 2 +FLAGS \\Deleted")
    assert raw.command("e", "EXPUNGE")[0] == b"* 2 EXPUNGE\r\n"
    cases = {
        "SEARCH ALL": b"1 2 3 4 5", "UID SEARCH ALL": b"1 3 4 5 6", "SEARCH 1:3,5": b"1 2 3 5",
        "SEARCH 4:2": b"2 3 4", "SEARCH UID 1:3,5": b"1 2 4", "SEARCH UID 4:2": b"2 3",
        "SEARCH 1:3 NOT UID 3": b"1 3", "SEARCH NOT 2,4": b"1 3 5", "SEARCH OR 1 UID 3": b"1 2",
        "SEARCH *": b"5", "SEARCH UID *": b"5", "SEARCH 6:*": b"5", "SEARCH *:6": b"5",
        "SEARCH UID 7:*": b"5", "SEARCH *:3": b"3 4 5", "SEARCH 1,4,*": b"1 4 5",
    }
    for i, (command, expected) in enumerate(cases.items()):
        reply = raw.command(f"c{i}", command)
        assert reply[0] == b"* SEARCH " + expected + b"\r\n", (command, reply)


def test_envelopes_like_imaptest(imap_server: ImapServer) -> None:
    """Comment names, empty Sender:/Reply-To:, groups and source routes (imaptest's fetch-envelope)."""
    head = b"Date: Sat, 01 Feb 2007 01:02:03 +0200\r\n"
    imap_server.deliver(head + b"From: user@domain (Real Name)\r\nSender: \r\nReply-To: \r\n\r\nbody\r\n")
    groups = b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
    imap_server.deliver(head + b"From: user@domain\r\n" + groups + b"\r\nb\r\n")
    imap_server.deliver(head + b"From: <@route:user@domain>\r\n\r\nbody\r\n")
    client = RawClient(imap_server.host, imap_server.port)
    client.login()
    client.command("s", "SELECT INBOX")
    reply = client.command("f", "FETCH 1:* ENVELOPE")
    date = b'"Sat, 01 Feb 2007 01:02:03 +0200"'
    assert reply[0] == b"* 1 FETCH (ENVELOPE (" + date + b' NIL (("Real Name" NIL "user" "domain")) '\
        b'(("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) NIL NIL NIL NIL NIL))\r\n'
    assert b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)' \
           b'(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL))' in reply[1]
    assert b'((NIL "@route" "user" "domain"))' in reply[2]
    client.close()


def _listing(reply: list[bytes]) -> set[bytes]:
    return {line.rstrip(b"\r\n") for line in reply[:-1]}


def test_subscriptions_are_names_not_folders(raw: RawClient) -> None:
    """RFC 3501 §6.3.9: LSUB returns \\Noselect parents for "%", names stay subscribed after DELETE."""
    raw.login()
    for name in ("m/", "m/test", "m/test2/", "m/test3/", "m/test2/test", "m/test3/test3"):
        assert raw.command("c", f"CREATE {name}")[-1].startswith(b"c OK"), name
    for name in ("m/test", "m/test2/test", "m/test3/test3"):
        assert raw.command("s", f"SUBSCRIBE {name}")[-1].startswith(b"s OK")
    assert _listing(raw.command("l1", 'LSUB "" m/%')) == {
        b'* LSUB () "/" m/test', b'* LSUB (\\Noselect) "/" m/test2', b'* LSUB (\\Noselect) "/" m/test3'}
    assert _listing(raw.command("l2", 'LSUB "" *test')) == {b'* LSUB () "/" m/test', b'* LSUB () "/" m/test2/test'}
    raw.command("u", "UNSUBSCRIBE m/test2/test")
    assert _listing(raw.command("l3", 'LSUB "" m/*')) == {b'* LSUB () "/" m/test', b'* LSUB () "/" m/test3/test3'}
    assert raw.command("n", "SUBSCRIBE never/created")[-1].startswith(b"n NO")  # as Dovecot
    raw.command("d", "DELETE m/test")
    assert _listing(raw.command("l4", 'LIST (SUBSCRIBED) "" m/*')) == {
        b'* LIST (\\Subscribed \\NonExistent) "/" m/test', b'* LIST (\\Subscribed) "/" m/test3/test3'}


def test_list_extended_options(raw: RawClient) -> None:
    raw.login()
    for name in ("x/t1", "x/t2/", "x/t2/t1", "x/t7/t7", "x/t8/t8", "x/t8/t9"):
        raw.command("c", f"CREATE {name}")
    for name in ("x/t1", "x/t2/t1", "x/t7/t7", "x/t8/t8", "x/t8/t9"):
        raw.command("s", f"SUBSCRIBE {name}")
    for bad in ('LIST (imaptest) "" ""', 'LIST (RECURSIVEMATCH) "" ""', 'LIST (RECURSIVEMATCH REMOTE) "" ""',
                'LIST "" "" RETURN (imaptest)'):
        assert raw.command("b", bad)[-1].startswith(b"b BAD"), bad
    assert raw.command("r", 'LIST (REMOTE) "" %')[-1].startswith(b"r OK")
    assert _listing(raw.command("a", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" x/t2% RETURN (CHILDREN)')) == {
        b'* LIST (\\HasChildren) "/" x/t2 (CHILDINFO ("SUBSCRIBED"))'}
    assert _listing(raw.command("b2", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" *t8')) == {
        b'* LIST (\\NonExistent) "/" x/t8 (CHILDINFO ("SUBSCRIBED"))', b'* LIST (\\Subscribed) "/" x/t8/t8'}
    assert _listing(raw.command("c2", 'LIST "" (x/t7 x/t7/t7)')) == {b'* LIST () "/" x/t7/t7'}
    assert _listing(raw.command("d2", 'LIST "" (x/*2 x/t1)')) == {b'* LIST () "/" x/t1', b'* LIST () "/" x/t2'}


def test_esearch_with_modseq_and_condstore_enabling_fetch(raw: RawClient, imap_server: ImapServer) -> None:
    for _ in range(4):
        imap_server.deliver(MSG)
    raw.login()
    raw.command("s", "SELECT INBOX")
    reply = raw.command("f", "FETCH 1 MODSEQ")  # a CONDSTORE-enabling command (RFC 7162 §3.1)
    assert reply[0].startswith(b"* OK [HIGHESTMODSEQ ")
    modseq = {}
    for n in (1, 3, 2, 4):
        line = raw.command(f"t{n}", f"STORE {n} +FLAGS \\Seen")[0]
        modseq[n] = int(line.split(b"MODSEQ (")[1].split(b")")[0])
    cases = {
        'SEARCH RETURN (MIN) 1:3 MODSEQ "/flags/\\\\seen" all 1': f"MIN 1 MODSEQ {modseq[1]}",
        'SEARCH RETURN (MAX) 1:3 MODSEQ "/flags/\\\\seen" all 1': f"MAX 3 MODSEQ {modseq[3]}",
        'SEARCH RETURN () 1:3 MODSEQ "/flags/\\\\seen" all 1': f"ALL 1:3 MODSEQ {modseq[2]}",
        'SEARCH RETURN (MIN MAX) 2:3 MODSEQ "/flags/\\\\seen" all 1': f"MIN 2 MAX 3 MODSEQ {modseq[2]}",
        f'SEARCH RETURN (ALL) 2:3 MODSEQ {modseq[2]}': f"ALL 2 MODSEQ {modseq[2]}",
    }
    for i, (command, expected) in enumerate(cases.items()):
        reply = raw.command(f"e{i}", command)
        assert reply[0] == f'* ESEARCH (TAG "e{i}") {expected}\r\n'.encode(), (command, reply)
    reply = raw.command("z", f"SEARCH RETURN (ALL) 2:3 MODSEQ {modseq[4]}")
    assert reply[0] == b'* ESEARCH (TAG "z")\r\n'


SEARCH_ADDRESSES = [
    b"From: user-from@domain.org\r\nTo: user-to@domain.org\r\nCc: user-cc@domain.org\r\nBcc: user-bcc@domain.org\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: RealTo <user-to@domain.org>\r\n",
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>\r\n",
    b"From: user-from@domain.org (RealFrom)\r\nTo: user-to@domain.org (RealTo)\r\n",
    b"From: user-from1@domain.org, user-from2@domain.org\r\nCc: user-cc@domain.org\r\n",
    b"To: groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n  groupname2: groupuser3@domain.org;\r\n",
]


def test_address_searches(raw: RawClient, imap_server: ImapServer) -> None:
    """Addresses are searched as parsed (comments removed) and as written (cases as imaptest's)."""
    for head in SEARCH_ADDRESSES:
        imap_server.deliver(head + b"\r\nbody\r\n")
    raw.login()
    raw.command("s", "SELECT INBOX")
    cases = {"FROM user-from@domain.org": b" 1 2 3 4", "TO user-to@domain.org": b" 1 2 3 4",
             "FROM realfrom": b" 2 4", "TO realto": b" 2 4", 'HEADER FROM ""': b" 1 2 3 4 5",
             'HEADER TO ""': b" 1 2 3 4 6", "FROM ser-fro": b" 1 2 3 4 5", "FROM ealfro": b" 2 4",
             "FROM user-from2": b" 5", "TO groupname": b" 6", "TO groupname2": b" 6", "TO groupuser3": b" 6",
             "TO groupuser4": b"", 'NOT HEADER CC ""': b" 2 3 4 6"}
    for i, (command, expected) in enumerate(cases.items()):
        reply = raw.command(f"c{i}", "SEARCH " + command)
        assert reply[0] == b"* SEARCH" + expected + b"\r\n", (command, reply)


def test_move_responses_and_move_into_the_same_mailbox(raw: RawClient, imap_server: ImapServer) -> None:
    for _ in range(3):
        imap_server.deliver(MSG)
    account = imap_server.store.account("alice@example.org")
    raw.login()
    raw.command("s", "SELECT INBOX")
    reply = raw.command("m", "MOVE 1 Archive")
    archive = account.folder("Archive").uidvalidity
    assert reply[:2] == [b"* OK [COPYUID %d 1 1] Moved UIDs.\r\n" % archive, b"* 1 EXPUNGE\r\n"]
    reply = raw.command("u", "UID MOVE 2 Archive")
    assert reply[:2] == [b"* OK [COPYUID %d 2 2] Moved UIDs.\r\n" % archive, b"* 1 EXPUNGE\r\n"]
    inbox = account.folder("INBOX").uidvalidity
    reply = raw.command("x", "MOVE 1 INBOX")  # RFC 6851: a new UID, the old one expunged
    assert reply[:3] == [b"* OK [COPYUID %d 3 4] Moved UIDs.\r\n" % inbox, b"* 1 EXPUNGE\r\n", b"* 1 EXISTS\r\n"]
    assert account.uids("INBOX") == [4]


def test_connection_flood_from_one_address_is_capped(imap_server: ImapServer) -> None:
    from appliance.imap import server as server_module

    limits = server_module.ConnectionLimits(total=10, per_ip=3)
    assert [limits.admit("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert limits.admit("192.0.2.2")
    limits.release("192.0.2.1")
    assert limits.admit("192.0.2.1")
    clients = [RawClient(imap_server.host, imap_server.port) for _ in range(5)]
    assert all(c.greeting.startswith(b"* OK") for c in clients)  # the default cap is far above this
    for c in clients:
        c.close()


def test_quota_extension(raw: RawClient, imap_server: ImapServer) -> None:
    raw.login()
    assert raw.command("a", "GETQUOTAROOT INBOX")[0] == b"* QUOTAROOT INBOX\r\n"  # unlimited: no root
    imap_server.store.set_quota("alice@example.org", 10 * 1024 * 1024)
    imap_server.deliver(b"Subject: q\r\n\r\n" + b"x" * 5000 + b"\r\n")
    reply = raw.command("b", "GETQUOTAROOT INBOX")
    assert reply[:2] == [b'* QUOTAROOT INBOX ""\r\n', b'* QUOTA "" (STORAGE 5 10240)\r\n']
    assert raw.command("c", 'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 5 10240)\r\n'
    assert raw.command("d", "GETQUOTA other")[-1].startswith(b"d NO")
    assert raw.command("e", 'SETQUOTA "" (STORAGE 1)')[-1].startswith(b"e NO [NOPERM]")
    assert raw.command("f", "GETQUOTAROOT Nope")[-1].startswith(b"f NO")


def test_append_with_bare_line_feeds_is_stored_with_crlf(raw: RawClient, imap_server: ImapServer) -> None:
    raw.login()
    message = b"Subject: lf\n\nline 1\nline 2\r\n"
    raw.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(message), message))
    assert raw.until("a")[-1].startswith(b"a OK")
    assert imap_server.store.account("alice@example.org").read("INBOX", 1) == b"Subject: lf\r\n\r\nline 1\r\nline 2\r\n"


def test_create_special_use(raw: RawClient) -> None:
    raw.login()
    assert raw.command("a", "CREATE MyFlagged (USE (\\Flagged))")[-1].startswith(b"a OK")
    assert raw.command("b", "CREATE Bad (USE (\\Bogus))")[-1].startswith(b"b NO [USEATTR]")
    reply = raw.command("l", 'LIST (SPECIAL-USE) "" My*')
    assert reply[0] == b'* LIST (\\Flagged) "/" MyFlagged\r\n'
