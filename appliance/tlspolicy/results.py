"""What a TLS policy saw at one delivery attempt, in the terms of a TLS-RPT report (RFC 8460 §4).

The policy code (MTA-STS, DANE) says, for every connection it applied a policy to, whether the session was
set up as the policy asks (``success``) or how it failed (``failure`` with an RFC 8460 §4.3 result type). The
TLS-RPT recorder (reports.py) counts them per policy domain and day; with reports off, ``NO_RESULTS`` takes
them and keeps nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# RFC 8460 §4.4: policy-type
STS = "sts"
TLSA = "tlsa"
NO_POLICY = "no-policy-found"

# RFC 8460 §4.3: result-type of a failure
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"
RESULT_TYPES = (
    STARTTLS_NOT_SUPPORTED, CERTIFICATE_HOST_MISMATCH, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_TRUSTED,
    VALIDATION_FAILURE, TLSA_INVALID, DNSSEC_INVALID, DANE_REQUIRED, STS_POLICY_FETCH_ERROR, STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
)


@dataclass(frozen=True)
class AppliedPolicy:
    """The policy of one destination domain as a report names it (RFC 8460 §4.4 "policy")."""

    policy_domain: str
    policy_type: str  # STS, TLSA or NO_POLICY
    policy_string: tuple[str, ...] = ()  # the MTA-STS policy's lines, or the TLSA records in presentation form
    mx_host: tuple[str, ...] = ()  # MTA-STS: the policy's mx patterns


@dataclass(frozen=True)
class Failure:
    """One failed session (RFC 8460 §4.4 "failure-details")."""

    result_type: str  # one of RESULT_TYPES
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_ip: str = ""
    failure_reason_code: str = ""  # free text: what went wrong, for the receiving domain's administrator


class TLSResults(Protocol):
    """Where the policy code reports each session it applied a policy to."""

    def success(self, policy: AppliedPolicy) -> None: ...

    def failure(self, policy: AppliedPolicy, failure: Failure) -> None: ...


class _Discard:
    """TLS-RPT off: the results are not kept."""

    def success(self, policy: AppliedPolicy) -> None:
        return None

    def failure(self, policy: AppliedPolicy, failure: Failure) -> None:
        return None


NO_RESULTS: TLSResults = _Discard()
