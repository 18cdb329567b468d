"""Sending the day's reports (RFC 8460 §5): gzipped JSON to every rua, by mail (§5.3) and by HTTPS POST (§5.2).

A mailed report is a multipart/report message, DKIM-signed with the signer the composition root hands in, and
committed to this host's own spool through ``submit``, so that it is delivered and retried as any mail. An
https: report is POSTed with httpx, retried a few times; a failure is logged. A (day, domain) is marked as
reported once every rua has been tried, so that a restart does not send it again; a domain without a usable
TLSRPT record is marked too (and logged), a DNS lookup that fails for now is left for the next round.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

import httpx

from appliance.tlspolicy.reports import ReportStore, build_report, day_bounds
from appliance.tlspolicy.rua import Rua

log = logging.getLogger("appliance.tlsrpt")

MEDIA_TYPE = "application/tlsrpt+gzip"  # RFC 8460 §6.4
RETRY_DELAYS = (5.0, 30.0)  # between the POST attempts of one https: rua

# submit(envelope sender, recipients, message bytes): commit a message to the spool (durably) for delivery.
Submit = Callable[[str, Sequence[str], bytes], Awaitable[None]]
Sign = Callable[[bytes], bytes]
LookupRua = Callable[[str], Awaitable[Rua | None]]


@dataclass(frozen=True)
class ReportSettings:
    """Who sends the reports and how they name themselves (tls_reports, with the defaults resolved)."""

    submitter: str  # the host name: the report's file name and TLS-Report-Submitter
    organization: str
    contact: str
    from_address: str
    https_timeout: float = 30.0


def report_filename(submitter: str, domain: str, day: str, unique: str) -> str:
    """RFC 8460 §5.1: sender "!" policy-domain "!" begin-timestamp "!" end-timestamp "!" unique-id ".json.gz"."""
    begin, end = day_bounds(day)
    return f"{submitter}!{domain}!{begin}!{end}!{unique}.json.gz"


def report_message(settings: ReportSettings, domain: str, report: dict, filename: str,
                   recipients: Sequence[str], now: float) -> bytes:
    """The RFC 8460 §5.3 message: multipart/report; report-type=tlsrpt, a human-readable part and the report."""
    message = EmailMessage(policy=SMTP)
    message["From"] = settings.from_address
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(_utc(now))
    message["Subject"] = (f"Report Domain: {domain} Submitter: {settings.submitter} "
                          f"Report-ID: <{report['report-id']}>")
    message["Message-ID"] = make_msgid(domain=settings.submitter)
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = settings.submitter
    message.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {settings.organization} ({settings.submitter}) on the\n"
        f"mail it sent to {domain} between {report['date-range']['start-datetime']} and "
        f"{report['date-range']['end-datetime']}.\n", cte="7bit")
    message.add_attachment(gzip.compress(_json(report), mtime=0), maintype="application",
                           subtype="tlsrpt+gzip", filename=filename)
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    return message.as_bytes()


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _json(report: dict) -> bytes:
    return json.dumps(report, separators=(",", ":"), sort_keys=False).encode()


async def post_report(client: httpx.AsyncClient, url: str, body: bytes,
                      delays: Sequence[float] = RETRY_DELAYS) -> bool:
    """POST the gzipped report to an https: rua (RFC 8460 §5.2), with a try after each of ``delays``.
    A 2xx answer is a success; anything else, or no answer, is logged and tried again."""
    for attempt in range(len(delays) + 1):
        try:
            answer = await client.post(url, content=body, headers={"Content-Type": MEDIA_TYPE})
            if answer.is_success:
                return True
            problem = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt < len(delays):
            log.info("tls-reports: POST to %s failed (%s); trying again in %.0fs", url, problem, delays[attempt])
            await asyncio.sleep(delays[attempt])
    log.warning("tls-reports: POST to %s failed after %d attempts (%s); the report is dropped for it",
                url, len(delays) + 1, problem)
    return False


class ReportSender:
    """Builds and sends the reports of finished days, and remembers which it sent."""

    def __init__(self, store: ReportStore, settings: ReportSettings, lookup_rua: LookupRua, submit: Submit,
                 sign: Sign | None = None, clock: Callable[[], float] = time.time,
                 retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.store = store
        self.settings = settings
        self.lookup_rua = lookup_rua
        self._submit = submit
        self._sign = sign
        self._clock = clock
        self._retry_delays = retry_delays

    async def send_due(self, today: str) -> list[str]:
        """Report every (day, domain) before ``today`` that has counts and no report yet."""
        done: list[str] = []
        for day, domain in self.store.unreported(before=today):
            done.append(await self.send_one(day, domain))
        return done

    async def send_day(self, day: str, force: bool = False) -> list[str]:
        """Report every domain that saw traffic on ``day``; one already reported only with ``force``."""
        done = []
        for domain in self.store.domains(day):
            previous = self.store.reported(day, domain)
            if previous is not None and not force:
                done.append(f"{day} {domain}: already reported (report-id {previous})")
                continue
            done.append(await self.send_one(day, domain))
        return done

    async def send_one(self, day: str, domain: str) -> str:
        """Send the report on one domain and day to its rua; a line saying what happened."""
        try:
            rua = await self.lookup_rua(domain)
        except Exception as exc:  # a DNS failure of the moment: the next round tries again
            log.warning("tls-reports: %s %s: cannot look up _smtp._tls.%s now (%s); trying again later",
                        day, domain, domain, exc)
            return f"{day} {domain}: rua lookup failed ({exc}); left for the next round"
        unique = uuid.uuid4().hex
        report_id = f"{day}.{unique}@{self.settings.submitter}"
        now = self._clock()
        if rua is None:
            log.info("tls-reports: %s %s: no TLSRPT record (_smtp._tls.%s), no report sent", day, domain, domain)
            self.store.mark_reported(day, domain, "-", now)
            return f"{day} {domain}: no TLSRPT record, nothing sent"
        s = self.settings
        report = build_report(self.store, day, domain, s.organization, s.contact, report_id)
        if report is None:
            return f"{day} {domain}: no traffic"
        filename = report_filename(s.submitter, domain, day, unique)
        sent = []
        if rua.mailto:
            await self._mail(domain, report, filename, rua.mailto, now)
            sent += [f"mailto:{a}" for a in rua.mailto]
        if rua.https:
            body = gzip.compress(_json(report), mtime=0)
            async with httpx.AsyncClient(timeout=s.https_timeout, follow_redirects=False) as client:
                for url in rua.https:
                    if await post_report(client, url, body, self._retry_delays):
                        sent.append(url)
        self.store.mark_reported(day, domain, report_id, now)
        log.info("tls-reports: %s %s: report %s sent to %s", day, domain, report_id, ", ".join(sent) or "nobody")
        return f"{day} {domain}: report {report_id} sent to {', '.join(sent) or 'nobody'}"

    async def _mail(self, domain: str, report: dict, filename: str, recipients: Sequence[str], now: float) -> None:
        data = report_message(self.settings, domain, report, filename, recipients, now)
        if self._sign is not None:
            data = self._sign(data)  # RFC 8460 §5.3: the report is DKIM-signed by the reporting domain
        await self._submit(self.settings.from_address, recipients, data)
