"""RFC 5804 at the byte level against `mailfleet serve`: framing, literals, response codes, states, STARTTLS."""

from __future__ import annotations

import base64

from tests.managesieve.conftest import GOOD, PASSWORD


def plain(user: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{PASSWORD}".encode())


def login(client, user: str) -> None:
    client.response()  # the greeting
    assert client.command(b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"')[-1].startswith(b"OK")


def test_greeting_lists_the_capabilities(loopback_server, raw_client, user) -> None:
    server = loopback_server
    lines = raw_client(server).response()
    caps = {line.rstrip(b"\r\n").split(b" ", 1)[0]: line.rstrip(b"\r\n") for line in lines[:-1]}
    assert caps[b'"IMPLEMENTATION"'] == b'"IMPLEMENTATION" "Mailfleet"'
    assert caps[b'"VERSION"'] == b'"VERSION" "1.0"'
    assert caps[b'"MAXREDIRECTS"'] == b'"MAXREDIRECTS" "4"'
    assert caps[b'"SASL"'] == b'"SASL" "PLAIN LOGIN"'
    assert b"fileinto" in caps[b'"SIEVE"']
    assert b'"STARTTLS"' in caps
    assert lines[-1].startswith(b"OK ")


def test_script_commands_need_a_login_and_unauthenticate_ends_it(loopback_server, raw_client, user) -> None:
    server = loopback_server
    client = raw_client(server)
    client.response()
    assert client.command(b"LISTSCRIPTS")[-1].startswith(b"NO")
    # AUTHENTICATE without an initial response: the server's empty challenge, the client's string
    client.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert client.file.readline() == b'""\r\n'
    assert client.command(b'"' + plain(user) + b'"')[-1].startswith(b"OK")
    assert client.command(b"LISTSCRIPTS") == [b'OK "Listscripts completed."\r\n']
    assert client.command(b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"')[-1].startswith(b"NO")
    assert client.command(b"UNAUTHENTICATE")[-1].startswith(b"OK")
    assert client.command(b"LISTSCRIPTS")[-1].startswith(b"NO")
    # the initial response as a literal, as Thunderbird's sieve extension sends it
    response = plain(user)
    assert client.command(b'AUTHENTICATE "PLAIN" {%d+}\r\n' % len(response) + response)[-1].startswith(b"OK")
    assert client.command(b"UNAUTHENTICATE")[-1].startswith(b"OK")
    client.send(b'AUTHENTICATE "PLAIN"\r\n')
    client.file.readline()
    assert client.command(b'"*"')[-1].startswith(b"NO")  # RFC 5804 §2.1: the client aborts
    assert client.command(b"LOGOUT") == [b'OK "Logout completed."\r\n']
    assert client.file.readline() == b""


def test_literals_both_ways_and_the_other_codes(loopback_server, raw_client, user) -> None:
    server = loopback_server
    client = raw_client(server)
    login(client, user)
    data = GOOD.encode()
    assert client.command(b'PUTSCRIPT "a" {%d+}\r\n' % len(data) + data)[-1].startswith(b"OK")
    # the synchronising form is taken as well (no continuation: RFC 5804 has none for literals)
    assert client.command(b'PUTSCRIPT {1+}\r\nb {%d}\r\n' % len(data) + data)[-1].startswith(b"OK")
    assert client.command(b'GETSCRIPT "b"') == [b"{%d}\r\n" % len(data) + data + b"\r\n",
                                               b'OK "Getscript completed."\r\n']
    assert client.command(b"LISTSCRIPTS")[:-1] == [b'"a"\r\n', b'"b"\r\n']
    assert client.command(b'NOOP "hi"') == [b'OK (TAG "hi") "Done"\r\n']
    assert client.command(b'DELETESCRIPT "zz"')[-1].startswith(b"NO (NONEXISTENT)")
    assert client.command(b'RENAMESCRIPT "a" "b"')[-1].startswith(b"NO (ALREADYEXISTS)")
    assert client.command(b'HAVESPACE "c" 999999')[-1].startswith(b"NO (QUOTA/MAXSIZE)")
    assert client.command(b'PUTSCRIPT "bad/name" "keep;"')[-1].startswith(b"NO")
    assert client.command(b"FROBNICATE")[-1] == b'NO "unknown command FROBNICATE"\r\n'
    # a literal over sieve.max_script_size is read and dropped; the session goes on
    assert client.command(b'PUTSCRIPT "c" {5000+}\r\n' + b"#" * 5000)[-1].startswith(b"NO (QUOTA/MAXSIZE)")
    assert client.command(b"NOOP")[-1].startswith(b"OK")
    assert client.command(b"LISTSCRIPTS")[:-1] == [b'"a"\r\n', b'"b"\r\n']


def test_starttls_reissues_the_capabilities(strict_server, raw_client, user) -> None:
    server = strict_server
    client = raw_client(server)
    greeting = client.response()
    assert b'"SASL" ""\r\n' in greeting
    refused = client.command(b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"')
    assert refused[-1].startswith(b"NO (ENCRYPT-NEEDED)")
    after = client.starttls(server)
    assert b'"SASL" "PLAIN LOGIN"\r\n' in after and b'"STARTTLS"\r\n' not in after
    assert after[-1].startswith(b"OK")
    assert client.command(b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"')[-1].startswith(b"OK")
    assert b'"OWNER" "%s"\r\n' % user.encode() in client.command(b"CAPABILITY")
