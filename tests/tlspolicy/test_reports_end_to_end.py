"""TLS-RPT end to end: a running mailfleet sends the day's reports to the rua that a real BIND publishes at
_smtp._tls.<domain>: by mail through its own queue to a real SMTP sink, by POST to a real HTTPS server."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import re
import time
from pathlib import Path

from jsonschema import Draft202012Validator

from appliance.cli.main import main
from appliance.tlspolicy import results
from appliance.tlspolicy.reports import ReportStore, TLSReportRecorder, day_bounds, store_path, utc_day

NET = "127.0.47"  # this piece's loopback range
SCHEMA = json.loads((Path(__file__).parent / "tlsrpt-schema.json").read_text())
STS = results.AppliedPolicy("company-y.test", results.STS, ("version: STSv1", "mode: enforce", "mx: mx.company-y.test",
                                                            "max_age: 86400"), ("mx.company-y.test",))
QUIET = results.AppliedPolicy("norua.test", results.NO_POLICY)


def yesterday() -> str:
    return utc_day(time.time() - 86400)


def record_yesterday(data_dir: Path) -> None:
    """Sessions as the policy code reports them, on yesterday's date (UTC)."""
    store = ReportStore(store_path(data_dir))
    recorder = TLSReportRecorder(store, clock=lambda: day_bounds(yesterday())[0] + 3600)
    for _ in range(5):
        recorder.success(STS)
    recorder.failure(STS, results.Failure(results.CERTIFICATE_EXPIRED, f"{NET}.1", "mx.company-y.test",
                                          f"{NET}.30", "certificate expired"))
    recorder.success(QUIET)
    recorder.flush()
    store.close()


def world(tmp_path, named_factory, smtp_sink, https_collector, monkeypatch):
    collector = https_collector(tmp_path / "https", f"{NET}.10")
    monkeypatch.setenv("SSL_CERT_FILE", str(collector.ca_file))  # the service's httpx trusts the test CA
    rua = f"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,{collector.url('/v1/tlsrpt')}"
    named = named_factory({"company-y.test": f'_smtp._tls IN TXT "{rua}"\n',
                           "norua.test": "@ IN TXT \"v=spf1 -all\"\n"})  # BIND binds interface addresses only
    sink = smtp_sink(address=f"{NET}.11")
    config = {
        "roles": ["outgoing_gateway"],
        "dns": {"nameservers": [named.address], "port": named.port, "timeout": "2s"},
        "delivery": {"smarthost": f"{sink.address}:{sink.port}", "connect_timeout": "2s"},
        "queue": {"retry_schedule": ["1s"]},
        "tls_reports": {"enabled": True, "organization": "Mailfleet Test", "from_address": "tlsrpt@mf.test.example"},
    }
    return collector, sink, config


def test_the_days_reports_reach_the_mailto_and_https_rua_once(tmp_path, named_factory, smtp_sink, https_collector,
                                                                monkeypatch, mailfleet_factory) -> None:
    collector, sink, config = world(tmp_path, named_factory, smtp_sink, https_collector, monkeypatch)
    server = mailfleet_factory(config, address=f"{NET}.1", run=False)
    record_yesterday(server.data_dir)
    server.start()

    sent = server.cli("tls-reports", "send")
    assert sent.returncode == 0, sent.stderr
    assert "norua.test: no TLSRPT record, nothing sent" in sent.stdout
    server.wait_for(lambda: len(sink.messages) == 1, what="the mailed report at the sink")
    assert "no TLSRPT record (_smtp._tls.norua.test)" in server.log()

    received = sink.messages[0]
    assert received.mail_from == "tlsrpt@mf.test.example" and received.rcpt_tos == ("tlsrpt@reports.test",)
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report" and message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == "company-y.test"
    assert message["TLS-Report-Submitter"] == "mf.test.example"
    _, attachment = message.iter_parts()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    begin, end = day_bounds(yesterday())
    assert re.fullmatch(rf"mf\.test\.example!company-y\.test!{begin}!{end}![0-9a-f]+\.json\.gz",
                        attachment.get_filename())
    report = json.loads(gzip.decompress(attachment.get_content()))
    Draft202012Validator(SCHEMA).validate(report)
    assert message["Subject"] == (f"Report Domain: company-y.test Submitter: mf.test.example "
                                  f"Report-ID: <{report['report-id']}>")
    assert report["organization-name"] == "Mailfleet Test" and report["contact-info"] == "postmaster@mf.test.example"
    assert report["policies"][0]["summary"] == {"total-successful-session-count": 5,
                                                "total-failure-session-count": 1}
    assert report["policies"][0]["failure-details"][0]["result-type"] == "certificate-expired"

    [post] = collector.posts
    assert post.path == "/v1/tlsrpt" and post.headers["content-type"] == "application/tlsrpt+gzip"
    assert json.loads(gzip.decompress(post.body)) == report

    server.restart()
    again = server.cli("tls-reports", "send")
    assert again.returncode == 0 and "no report due" in again.stdout
    already = server.cli("tls-reports", "send", "--day", yesterday())
    assert "company-y.test: already reported" in already.stdout
    assert len(collector.posts) == 1 and len(sink.messages) == 1


def test_without_a_server_the_report_waits_in_the_spool(tmp_path, named_factory, smtp_sink, https_collector,
                                                        monkeypatch, mailfleet_factory) -> None:
    collector, sink, config = world(tmp_path, named_factory, smtp_sink, https_collector, monkeypatch)
    server = mailfleet_factory(config, address=f"{NET}.1", run=False)
    record_yesterday(server.data_dir)
    sent = server.cli("tls-reports", "send", "--day", yesterday())
    assert sent.returncode == 0, sent.stderr
    assert len(server.queue_ids()) == 1 and len(collector.posts) == 1
    server.start()
    server.wait_for(lambda: len(sink.messages) == 1, what="the spooled report at the sink")
    assert sink.messages[0].rcpt_tos == ("tlsrpt@reports.test",)


def test_bad_input_is_refused_with_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "mailfleet.yml"
    base = f"hostname: mf.test.example\ndata_dir: {tmp_path / 'data'}\nroles: [outgoing_gateway]\n"
    path.write_text(base + "tls_reports: {enabled: true}\n")
    for args, text in ((("--day", "tomorrow"), "expected a date YYYY-MM-DD"),
                       (("--day", utc_day(time.time())), "is not over yet"), (("--force",), "--force needs --day")):
        assert main(["--config", str(path), "tls-reports", "send", *args]) == 2
        error = capsys.readouterr().err
        assert error.startswith("mailfleet: ") and text in error and error.count("\n") == 1
    path.write_text(base + "tls_reports: {enabled: false}\n")
    assert main(["--config", str(path), "tls-reports", "send"]) == 2
    assert "tls_reports.enabled is false" in capsys.readouterr().err
    path.write_text(base + "tls_reports: {enabled: true, https_timeout: 10}\n")
    assert main(["--config", str(path), "tls-reports", "send"]) == 2
    assert "tls_reports.https_timeout: expected a duration" in capsys.readouterr().err
