"""TLS-RPT (RFC 8460): sessions recorded through the TLSResults interface as the policy code reports them, the
day's report built from them and checked against the §4.4 schema, the TLSRPT record parser, the §5.3 message."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from appliance.service.tls_reports import next_round, parse_day
from appliance.tlspolicy import results
from appliance.tlspolicy.reports import ReportStore, TLSReportRecorder, build_report, day_bounds
from appliance.tlspolicy.rua import Rua, parse_record, select_record
from appliance.tlspolicy.sending import ReportSender, ReportSettings, report_filename, report_message

SCHEMA = json.loads((Path(__file__).parent / "tlsrpt-schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)

DAY = "2026-12-02"
NOON = day_bounds(DAY)[0] + 12 * 3600
STS = results.AppliedPolicy("company-y.example", results.STS,
                            ("version: STSv1", "mode: enforce", "mx: *.mail.company-y.example", "max_age: 86400"),
                            ("*.mail.company-y.example",))
DANE = results.AppliedPolicy("dane.example", results.TLSA, ("3 1 1 0123456789abcdef",))
NONE = results.AppliedPolicy("plain.example", results.NO_POLICY)
MISMATCH = results.Failure(results.CERTIFICATE_HOST_MISMATCH, "127.0.47.1", "mx1.mail.company-y.example",
                           "127.0.47.20", "certificate names mx9.elsewhere.example")
NO_STARTTLS = results.Failure(results.STARTTLS_NOT_SUPPORTED, "127.0.47.1", "mx2.mail.company-y.example",
                              "127.0.47.21")


@pytest.fixture
def store(tmp_path: Path):
    store = ReportStore(tmp_path / "tls-reports.sqlite")
    yield store
    store.close()


def record(store: ReportStore, clock: float = NOON) -> TLSReportRecorder:
    recorder = TLSReportRecorder(store, clock=lambda: clock)
    tls: results.TLSResults = recorder  # the policy code sees the interface only
    for _ in range(3):
        tls.success(STS)
    tls.failure(STS, MISMATCH)
    tls.failure(STS, MISMATCH)
    tls.failure(STS, NO_STARTTLS)
    tls.success(DANE)
    tls.success(NONE)
    return recorder


def test_nothing_is_written_before_the_flush_and_everything_after(store) -> None:
    recorder = record(store)
    assert store.domains(DAY) == []
    recorder.flush()
    assert store.domains(DAY) == ["company-y.example", "dane.example", "plain.example"]


def test_the_days_report_counts_the_sessions_and_groups_the_failures(store) -> None:
    record(store).flush()
    record(store).flush()  # a second batch adds to the first
    report = build_report(store, DAY, "company-y.example", "Mailfleet Org", "postmaster@example.org", "r1@mf")
    VALIDATOR.validate(report)
    assert report["date-range"] == {"start-datetime": "2026-12-02T00:00:00Z", "end-datetime": "2026-12-02T23:59:59Z"}
    assert report["organization-name"] == "Mailfleet Org" and report["contact-info"] == "postmaster@example.org"
    [policy] = report["policies"]
    assert policy["policy"] == {"policy-type": "sts", "policy-string": list(STS.policy_string),
                                "policy-domain": "company-y.example", "mx-host": ["*.mail.company-y.example"]}
    assert policy["summary"] == {"total-successful-session-count": 6, "total-failure-session-count": 6}
    assert policy["failure-details"] == [
        {"result-type": "certificate-host-mismatch", "sending-mta-ip": "127.0.47.1",
         "receiving-mx-hostname": "mx1.mail.company-y.example", "receiving-ip": "127.0.47.20",
         "failed-session-count": 4, "failure-reason-code": "certificate names mx9.elsewhere.example"},
        {"result-type": "starttls-not-supported", "sending-mta-ip": "127.0.47.1",
         "receiving-mx-hostname": "mx2.mail.company-y.example", "receiving-ip": "127.0.47.21",
         "failed-session-count": 2},
    ]


def test_a_policy_without_failures_or_strings_leaves_the_optional_members_out(store) -> None:
    record(store).flush()
    report = build_report(store, DAY, "plain.example", "o", "c@example.org", "r2@mf")
    VALIDATOR.validate(report)
    assert report["policies"] == [{"policy": {"policy-type": "no-policy-found", "policy-domain": "plain.example"},
                                   "summary": {"total-successful-session-count": 1,
                                               "total-failure-session-count": 0}}]


def test_sessions_count_in_the_utc_day_they_happened(store) -> None:
    start, end = day_bounds(DAY)
    TLSReportRecorder(store, clock=lambda: start - 1).success(DANE)  # the last second of the day before
    for moment in (start, end):
        recorder = TLSReportRecorder(store, clock=lambda moment=moment: moment)
        recorder.success(DANE)
        recorder.flush()
    report = build_report(store, DAY, "dane.example", "o", "c@example.org", "r3@mf")
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 2
    assert build_report(store, "2026-12-01", "dane.example", "o", "c@example.org", "r4@mf") is None


@given(st.lists(st.sampled_from([STS, DANE, NONE]), min_size=1, max_size=20),
       st.lists(st.tuples(st.sampled_from([STS, DANE, NONE]), st.sampled_from(results.RESULT_TYPES),
                          st.sampled_from(["", "127.0.47.1", "::1"]), st.text(max_size=20)), max_size=20))
def test_every_report_follows_the_schema_and_adds_up(successes, failures) -> None:
    with _temporary_store() as store:
        recorder = TLSReportRecorder(store, clock=lambda: NOON)
        for policy in successes:
            recorder.success(policy)
        for policy, kind, ip, reason in failures:
            recorder.failure(policy, results.Failure(kind, ip, "mx.example", ip, reason))
        recorder.flush()
        for policy in {p.policy_domain for p in successes} | {f[0].policy_domain for f in failures}:
            report = build_report(store, DAY, policy, "o", "c@example.org", "id@mf")
            VALIDATOR.validate(report)
            for entry in report["policies"]:
                counted = sum(d["failed-session-count"] for d in entry.get("failure-details", []))
                assert counted == entry["summary"]["total-failure-session-count"]


class _temporary_store:
    """An in-memory store per hypothesis example: the counting is under test here, not the disk."""

    def __enter__(self) -> ReportStore:
        self._store = ReportStore(Path(":memory:"))
        return self._store

    def __exit__(self, *exc: object) -> None:
        self._store.close()


# ---------------------------------------------------------------------------------------------- the TLSRPT record

def test_the_record_gives_its_mailto_and_https_destinations() -> None:
    rua = parse_record("v=TLSRPTv1; rua=mailto:tlsrpt@example.net, https://reports.example.net/v1/tlsrpt;")
    assert rua == Rua(("tlsrpt@example.net",), ("https://reports.example.net/v1/tlsrpt",))
    assert parse_record("v=TLSRPTv1;rua=mailto:a@example.net%2Cb@example.net?subject=x;ext=1") == Rua(
        ("a@example.net", "b@example.net"))


@pytest.mark.parametrize("text", [
    "v=TLSRPTv1", "v=TLSRPTv1;", "v=TLSRPTv2; rua=mailto:a@example.net", "v=TLSRPTv1; rua=",
    "v=TLSRPTv1; rua=ftp://example.net/x", "v=TLSRPTv1; rua=mailto:nobody",
    "v=TLSRPTv1; rua=mailto:a@example.net; rua=mailto:b@example.net", "v=TLSRPTv1; bad field",
])
def test_a_record_without_a_usable_destination_means_no_reports(text: str) -> None:
    assert parse_record(text) is None


def test_only_one_tlsrpt_record_counts() -> None:
    one = "v=TLSRPTv1; rua=mailto:a@example.net"
    assert select_record(["v=spf1 -all", one]) == one
    assert select_record([one, "v=TLSRPTv1; rua=mailto:b@example.net"]) is None  # RFC 8460 §3: two is none
    assert select_record(["v=TLSRPTv10; rua=mailto:a@example.net"]) is None


_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_+", min_size=1, max_size=10)
_domain = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(example|test|net)", fullmatch=True)


@given(st.lists(st.tuples(_local, _domain), min_size=1, max_size=4),
       st.lists(st.tuples(_domain, st.from_regex(r"[a-z0-9/]{0,12}", fullmatch=True)), max_size=3),
       st.sampled_from([",", ", ", " ,"]), st.sampled_from([";", "; ", " ; "]), st.booleans())
def test_records_round_trip(mailboxes, urls, comma, semicolon, trailing) -> None:
    uris = [f"mailto:{local}@{domain}" for local, domain in mailboxes] + [f"https://{h}/{p}" for h, p in urls]
    text = f"v=TLSRPTv1{semicolon}rua={comma.join(uris)}" + (semicolon if trailing else "")
    rua = parse_record(text)
    assert rua is not None
    assert rua.mailto == tuple(dict.fromkeys(f"{local}@{domain}" for local, domain in mailboxes))
    assert rua.https == tuple(dict.fromkeys(f"https://{h}/{p}" for h, p in urls))


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_without_an_error(text: str) -> None:
    rua = parse_record(text)
    assert rua is None or rua.mailto or rua.https
    select_record([text, text[:10]])


# ---------------------------------------------------------------------------------------------- the message

SETTINGS = ReportSettings(submitter="mf.test.example", organization="Mailfleet Org",
                          contact="postmaster@example.org", from_address="tlsrpt@mf.test.example")


def test_the_mailed_report_is_a_multipart_report_with_the_gzipped_json(store) -> None:
    record(store).flush()
    report = build_report(store, DAY, "company-y.example", "o", "c@example.org", "2026-12-02.abc@mf.test.example")
    name = report_filename("mf.test.example", "company-y.example", DAY, "abc")
    assert name == "mf.test.example!company-y.example!1796169600!1796255999!abc.json.gz"
    data = report_message(SETTINGS, "company-y.example", report, name, ["rua@company-y.example"], NOON)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == "company-y.example"
    assert message["TLS-Report-Submitter"] == "mf.test.example"
    assert message["Subject"] == ("Report Domain: company-y.example Submitter: mf.test.example "
                                  "Report-ID: <2026-12-02.abc@mf.test.example>")
    assert message["From"] == "tlsrpt@mf.test.example"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == name
    assert json.loads(gzip.decompress(attachment.get_content())) == report


def test_a_report_is_sent_once_and_a_domain_without_record_is_logged(store, caplog) -> None:
    record(store).flush()
    mailed: list[tuple[str, tuple[str, ...], bytes]] = []

    async def submit(sender, recipients, data) -> None:
        mailed.append((sender, tuple(recipients), data))

    async def lookup(domain: str) -> Rua | None:
        return Rua(("rua@company-y.example",)) if domain == "company-y.example" else None

    sender = ReportSender(store, SETTINGS, lookup, submit, sign=lambda data: b"DKIM-Signature: test\r\n" + data,
                          clock=lambda: NOON + 86400)
    caplog.set_level("INFO", "appliance.tlsrpt")
    lines = asyncio.run(sender.send_due("2026-12-03"))
    assert len(mailed) == 1 and mailed[0][:2] == ("tlsrpt@mf.test.example", ("rua@company-y.example",))
    assert mailed[0][2].startswith(b"DKIM-Signature: test\r\n")
    assert "dane.example: no TLSRPT record" in caplog.text and len(lines) == 3
    assert asyncio.run(sender.send_due("2026-12-03")) == []
    assert "already reported" in asyncio.run(sender.send_day(DAY))[0]
    assert len(mailed) == 1
    asyncio.run(sender.send_day(DAY, force=True))
    assert len(mailed) == 2


def test_the_rounds_fall_shortly_after_midnight_utc() -> None:
    rng = random.Random(1)
    for now in (NOON, day_bounds(DAY)[0], day_bounds(DAY)[1]):
        at = next_round(now, 900, rng)
        assert day_bounds("2026-12-03")[0] + 60 <= at <= day_bounds("2026-12-03")[0] + 900
    assert NOON + 60 <= next_round(NOON, 900, rng, after_start=True) <= NOON + 900


def test_a_day_must_be_a_finished_utc_day() -> None:
    assert parse_day("2026-12-02", "2026-12-03") == "2026-12-02"
    with pytest.raises(ValueError, match="not over"):
        parse_day("2026-12-03", "2026-12-03")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("yesterday", "2026-12-03")


def test_an_https_rua_that_keeps_failing_is_tried_three_times_and_logged(store, https_collector, tmp_path,
                                                                         monkeypatch, caplog) -> None:
    collector = https_collector(tmp_path / "https", "127.0.47.12")
    collector.status = 503
    monkeypatch.setenv("SSL_CERT_FILE", str(collector.ca_file))
    record(store).flush()

    async def lookup(domain: str) -> Rua | None:
        return Rua(https=(collector.url("/tlsrpt"),))

    async def no_mail(sender, recipients, data) -> None:
        raise AssertionError("no mailto: in this rua")

    sender = ReportSender(store, SETTINGS, lookup, no_mail, retry_delays=(0, 0))
    line = asyncio.run(sender.send_one(DAY, "dane.example"))
    assert len(collector.posts) == 3 and "sent to nobody" in line
    assert "failed after 3 attempts (HTTP 503)" in caplog.text
    assert store.reported(DAY, "dane.example") is not None  # logged and done: not sent again tomorrow
