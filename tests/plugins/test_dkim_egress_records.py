"""The collection's DKIM keys, egress pool and the DNS records made of them (plugins/modules/dkim_key.py,
plugins/lookup/dkim_records.py, plugins/filter/{dkim,egress,topology,dns_records}.py): keys verified by dkimpy
against the records dns_records renders, SPF and PTR covering every egress address."""

from __future__ import annotations

import base64
import importlib.util
import stat
import sys
from pathlib import Path

import dkim
import pytest
from ansible.errors import AnsibleFilterError
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
sys.path[:0] = [str(PLUGINS / "filter"), str(PLUGINS / "lookup"), str(PLUGINS / "modules")]
from dkim_key import new_key_pem, write_atomically  # noqa: E402
from dkim_keys import dkim_keys  # noqa: E402
from dkim_records import dkim_record_text  # noqa: E402
from dns_records import dns_records_of, txt_strings  # noqa: E402

# By its path: tests/egress is the package `egress` on this path too (the appliance's egress tests).
_spec = importlib.util.spec_from_file_location("mailfleet_filter_egress", PLUGINS / "filter" / "egress.py")
assert _spec is not None and _spec.loader is not None
_egress = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_egress)
egress_cidr, egress_entry = _egress.egress_cidr, _egress.egress_entry
from topology import forwarders, topology  # noqa: E402

MESSAGE = (b"From: alice@example.test\r\nTo: carol@internet.test\r\nSubject: signed\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nhello\r\n")
SETTINGS = {"mx_preference": 10, "backup_mx_preference": 20, "spf_all": "-all", "dmarc_policy": "none",
            "dmarc_rua": "postmaster", "mta_sts_mode": "testing", "mta_sts_max_age": 604800,
            "tlsrpt_rua": "postmaster"}
GROUPS = {"primary": ["mail"], "outgoing_gateway": ["gw"]}
HOSTVARS = {
    "mail": {"appliance_address": "192.0.2.10", "primary_domains": ["example.test"],
             "primary_aliases": {"postmaster@example.test": ["alice@example.test"]}},
    "gw": {"appliance_address": "192.0.2.20", "appliance_hostname": "gw-out.example.test",
           "outgoing_gateway_egress": [{"address": "192.0.2.200", "helo": "out1.example.test"},
                                       {"address": "2001:db8::201"}]},
}


def _dkimpy_key(pem: bytes, algorithm: str) -> bytes:
    """dkimpy takes RSA as PEM and Ed25519 as the base64 of the raw 32-octet private key."""
    if algorithm == "rsa":
        return pem
    key = serialization.load_pem_private_key(pem, password=None)
    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


def _unquote(txt: str) -> bytes:
    """What a resolver gives for the TXT data: the character-strings joined (RFC 6376 §3.6.2.2)."""
    parts = txt.split('" "')
    return "".join(p.strip('"') for p in parts).encode()


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_a_made_key_signs_what_dkimpy_verifies_against_the_rendered_record(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "dkim" / "example.test" / "mf1.pem"
    write_atomically(str(path), new_key_pem(algorithm))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = [{"domain": "example.test", "selector": "mf1", "record": dkim_record_text(path.read_bytes())}]
    records = dns_records_of("example.test", topology(GROUPS, HOSTVARS), {**SETTINGS, "dkim": keys})
    (txt,) = [r["value"] for r in records if r["name"] == "mf1._domainkey"]
    assert all(len(part.strip('"')) <= 255 for part in txt.split('" "'))
    signer = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
    signature = dkim.sign(MESSAGE, b"mf1", b"example.test", _dkimpy_key(path.read_bytes(), algorithm),
                          signature_algorithm=signer.encode())
    zone = {b"mf1._domainkey.example.test.": _unquote(txt)}
    assert dkim.verify(signature + MESSAGE, dnsfunc=lambda name, timeout=5: zone.get(name, b""))
    other = _dkimpy_key(new_key_pem(algorithm), algorithm)
    forged = dkim.sign(MESSAGE, b"mf1", b"example.test", other, signature_algorithm=signer.encode())
    assert not dkim.verify(forged + MESSAGE, dnsfunc=lambda name, timeout=5: zone.get(name, b""))


def test_spf_lists_every_egress_address_and_the_helo_names_resolve() -> None:
    records = dns_records_of("example.test", topology(GROUPS, HOSTVARS), SETTINGS)
    (spf,) = [r["value"] for r in records if r["type"] == "TXT" and r["name"] == "@"]
    assert spf == '"v=spf1 ip4:192.0.2.20 ip4:192.0.2.200 ip6:2001:db8::201 -all"'
    assert {"name": "out1", "type": "A", "value": "192.0.2.200"} in records
    assert {"name": "gw-out", "type": "AAAA", "value": "2001:db8::201"} in records


def test_each_egress_address_expects_the_ptr_of_its_helo_name() -> None:
    egress = topology(GROUPS, HOSTVARS)["hosts"]["gw"]["egress"]
    assert egress == [
        {"address": "192.0.2.200", "helo": "out1.example.test", "reverse": "200.2.0.192.in-addr.arpa"},
        {"address": "2001:db8::201", "helo": "gw-out.example.test",
         "reverse": "1.0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"}]


def test_a_bad_egress_entry_is_named() -> None:
    with pytest.raises(AnsibleFilterError, match="'300.1.1.1'.*not an IP address"):
        egress_cidr({"address": "300.1.1.1"})
    with pytest.raises(AnsibleFilterError, match="192.0.2.1: prefix 33"):
        egress_cidr({"address": "192.0.2.1", "prefix": 33})
    assert egress_cidr({"address": "2001:db8::1"}) == "2001:db8::1/128"
    assert egress_cidr({"address": "192.0.2.1", "prefix": 24}) == "192.0.2.1/24"
    assert egress_entry({"address": "192.0.2.1"}, "gw.example.test.") == {"address": "192.0.2.1",
                                                                           "helo": "gw.example.test"}


def test_one_key_per_domain_and_algorithm_under_the_controller_folder() -> None:
    keys = dkim_keys(["b.test", "A.test"], {"rsa": "r1", "ed25519": "e1"}, "/keys/")
    assert [(k["domain"], k["algorithm"], k["file"]) for k in keys] == [
        ("a.test", "rsa", "/keys/dkim/a.test/r1.pem"), ("a.test", "ed25519", "/keys/dkim/a.test/e1.pem"),
        ("b.test", "rsa", "/keys/dkim/b.test/r1.pem"), ("b.test", "ed25519", "/keys/dkim/b.test/e1.pem")]
    with pytest.raises(AnsibleFilterError, match="'bad_selector' is not a DNS label"):
        dkim_keys(["a.test"], {"rsa": "bad_selector"}, "/keys")
    with pytest.raises(AnsibleFilterError, match="\\['dsa'\\]"):
        dkim_keys(["a.test"], {"dsa": "d1"}, "/keys")
    with pytest.raises(AnsibleFilterError, match="its own selector"):
        dkim_keys(["a.test"], {"rsa": "s", "ed25519": "s"}, "/keys")


def test_primaries_forwarding_outside_the_fleet_are_found() -> None:
    hostvars = {**HOSTVARS, "mail2": {"primary_domains": ["other.test"],
                                       "primary_aliases": {"x@other.test": ["x@gmail.example"]}},
                "postfix": {"primary_domains": ["f.test"], "primary_foreign": True,
                            "primary_aliases": {"y@f.test": ["y@gmail.example"]}}}
    assert forwarders(["mail", "mail2", "postfix"], hostvars) == ["mail2"]


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e, blacklist_characters='"\\'),
               max_size=1200))
def test_txt_strings_split_into_at_most_255_octets_and_join_back(text: str) -> None:
    rendered = txt_strings(text)
    parts = rendered[1:-1].split('" "') if text else [""]
    assert all(len(p) <= 255 for p in parts)
    assert "".join(parts) == text


def test_txt_strings_refuse_a_quote() -> None:
    with pytest.raises(ValueError, match="quote"):
        txt_strings('v=spf1 "x"')


@pytest.mark.parametrize("plugin", ["modules/dkim_key.py", "lookup/dkim_records.py"])
def test_the_plugin_documentation_is_the_yaml_ansible_doc_reads(plugin: str) -> None:
    import ast

    import yaml

    tree = ast.parse((PLUGINS / plugin).read_text(encoding="utf-8"))
    docs = {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")}
    assert "DOCUMENTATION" in docs
    for name, text in docs.items():
        assert yaml.safe_load(text), name
    assert yaml.safe_load(docs["DOCUMENTATION"])["short_description"]
