"""DKIM (RFC 6376; rsa-sha256 and ed25519-sha256, RFC 8463) and ARC (RFC 8617) verification, by dkimpy.

dkimpy is synchronous and asks DNS through the ``dnsfunc`` it is given. The keys a message needs (the s= and
d= of every DKIM-Signature, ARC-Message-Signature and ARC-Seal) are fetched first, concurrently, on the
appliance's resolver; dkimpy then runs in the thread pool with a ``dnsfunc`` that only reads those answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .resolver import Lookups, TempError

log = logging.getLogger("appliance.senderauth")
# At most this many DKIM signatures are checked, and keys fetched for a message: a message with a thousand
# signatures must not cost a thousand lookups (the ones past the limit are reported as not checked).
MAX_SIGNATURES = 8
MAX_KEYS = 24
_SIGNED = (b"dkim-signature", b"arc-message-signature", b"arc-seal")
# The fields of an ARC set (RFC 8617 §4.1; dkimpy's ARC.ARC_HEADERS): without any, the chain is "none".
_ARC_FIELDS = frozenset((b"arc-seal", b"arc-message-signature", b"arc-authentication-results"))
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # as dkimpy reads a field: no space before the colon
_silent = logging.getLogger("appliance.senderauth.dkimpy")  # dkimpy logs every failure as an error
_silent.propagate = False
_silent.addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's result (RFC 8601 §2.7.1) with what the header shows of it (RFC 6008: header.b)."""

    result: str  # pass fail neutral temperror permerror policy
    domain: str  # d=
    selector: str  # s=
    b: str  # the first characters of b=, which tell signatures of one domain apart
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: str  # pass fail none
    instances: int
    reason: str = ""


class _Missing(Exception):
    """The key record does not exist (a permanent error of that signature)."""


class _BadKey(Exception):
    """The key record is not a key (dkimpy reports it as a failed signature; RFC 6376 §6.1.2: a PERMFAIL)."""


def usable(content: bytes) -> bytes:
    """``content`` with its header section ended at the first line that is neither a field nor a continuation
    (the body from there on, as filters/headers.py reads a message): dkimpy refuses such a message outright,
    and a message must not escape DMARC by carrying one bad line."""
    position = 0
    size = len(content)
    while position < size:
        end = content.find(b"\r\n", position)
        end = size if end < 0 else end + 2
        line = content[position:end]
        if line == b"\r\n":
            return content
        if not ((position and line[:1] in (b" ", b"\t")) or _FIELD_START.match(line)):
            return content[:position] + b"\r\n" + content[position:]
        position = end
    return content


def headers(content: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as dkimpy reads them: (name, value with its folds)."""
    return [(name, value) for name, value in dkim.rfc822_parse(content)[0]]


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return parse_tag_value(re.sub(rb"\r\n", b"", value))
    except InvalidTagValueList:
        return {}


def _key_name(tags: dict[bytes, bytes]) -> bytes | None:
    selector, domain = tags.get(b"s", b"").strip(), tags.get(b"d", b"").strip()
    if not selector or not domain:
        return None
    return selector + b"._domainkey." + domain.rstrip(b".") + b"."


class Verifier:
    """DKIM and ARC verification of one message at a time, on the shared Lookups."""

    def __init__(self, lookups: Lookups) -> None:
        self._lookups = lookups

    async def _keys(self, fields: list[tuple[bytes, bytes]]) -> dict[bytes, bytes | Exception]:
        names: list[bytes] = []
        for name, value in fields:
            if name.lower() in _SIGNED:
                key = _key_name(_tags(value))
                if key is not None and key.lower() not in names:
                    names.append(key.lower())
        names = names[:MAX_KEYS]
        answers = await asyncio.gather(*(self._lookups.txt(name.decode("ascii", "replace")) for name in names),
                                       return_exceptions=True)
        found: dict[bytes, bytes | Exception] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, TempError):
                found[name] = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found[name] = answer[0] if answer else _Missing(f"no key at {name.decode('ascii', 'replace')}")
        return found

    async def verify(self, content: bytes, arc: bool, check_dkim: bool = True,
                     fields: list[tuple[bytes, bytes]] | None = None) -> tuple[list[DkimResult], ArcResult | None]:
        """Each DKIM signature's result (topmost first), and the ARC chain's (None when ``arc`` is off).

        With ``fields``, ``content`` is already as ``usable`` returns it and ``fields`` are its ``headers`` (the
        DATA check reads them for DMARC too: the message is parsed once). A message with neither DKIM-Signature
        nor ARC fields costs no hop to the thread pool."""
        if fields is None:
            content = usable(content)
            fields = headers(content)
        names = {name.lower() for name, _ in fields}
        if not (check_dkim and b"dkim-signature" in names) and not (arc and names & _ARC_FIELDS):
            return [], (ArcResult("none", 0) if arc else None)
        keys = await self._keys(fields)
        return await self._lookups.run(self._verify, content, fields, keys, arc, check_dkim)

    def _verify(self, content: bytes, fields: list[tuple[bytes, bytes]], keys: dict[bytes, bytes | Exception],
                arc: bool, check_dkim: bool) -> tuple[list[DkimResult], ArcResult | None]:
        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = keys.get(name.lower())
            if isinstance(answer, Exception):
                raise answer
            try:
                dkim.evaluate_pk(name, answer)
            except dkim.KeyFormatError as exc:
                raise _BadKey(f"the key at {name.decode('ascii', 'replace')} is not a key: {exc}") from None
            return answer

        results = self._dkim(content, fields, dnsfunc) if check_dkim else []
        if not arc:
            return results, None
        if not any(name.lower() in _ARC_FIELDS for name, _ in fields):
            return results, ArcResult("none", 0)  # what dkimpy finds, without parsing the message again
        return results, self._arc(content, dnsfunc)

    def _dkim(self, content: bytes, fields: list[tuple[bytes, bytes]], dnsfunc: object) -> list[DkimResult]:
        signatures = [value for name, value in fields if name.lower() == b"dkim-signature"]
        results: list[DkimResult] = []
        if not signatures:
            return results
        verifier = dkim.DKIM(content, logger=_silent)
        for index, value in enumerate(signatures[:MAX_SIGNATURES]):
            tags = _tags(value)
            domain = tags.get(b"d", b"").decode("ascii", "replace").strip()
            selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
            b = re.sub(rb"\s", b"", tags.get(b"b", b""))[:12].decode("ascii", "replace")

            def result(outcome: str, reason: str = "", domain: str = domain, selector: str = selector,
                       b: str = b) -> DkimResult:
                return DkimResult(outcome, domain, selector, b, reason)

            try:
                verified = verifier.verify(index, dnsfunc=dnsfunc)
            except TempError as exc:
                results.append(result("temperror", f"key lookup: {exc}"))
            except (_Missing, _BadKey, dkim.KeyFormatError) as exc:  # no key, or not a key (RFC 6376 §6.1.2)
                results.append(result("permerror", str(exc)))
            except dkim.DKIMException as exc:
                if str(exc).startswith("body hash mismatch"):  # RFC 6376 §6.1.3: the body was changed
                    results.append(result("fail", "body hash did not verify"))
                else:  # a signature that cannot be processed (RFC 8601 §2.7.1 neutral)
                    results.append(result("neutral", str(exc)))
            except Exception as exc:  # dkimpy tripping over hostile input: that signature is not verified
                log.warning("DKIM signature d=%s s=%s could not be checked: %s: %s", domain, selector,
                            exc.__class__.__name__, exc)
                results.append(result("neutral", "the signature could not be checked"))
            else:
                results.append(result("pass") if verified else result("fail", "signature did not verify"))
        return results

    def _arc(self, content: bytes, dnsfunc: object) -> ArcResult:
        chain = dkim.ARC(content, logger=_silent)
        try:
            outcome, instances, reason = chain.verify(dnsfunc=dnsfunc)
        except TempError as exc:
            return ArcResult("fail", 0, f"key lookup: {exc}")  # RFC 8617 §5.2 knows no temperror
        except (_Missing, _BadKey, dkim.DKIMException) as exc:
            return ArcResult("fail", 0, str(exc))
        except Exception as exc:  # dkimpy tripping over hostile input: the chain is not verified
            log.warning("ARC chain could not be checked: %s: %s", exc.__class__.__name__, exc)
            return ArcResult("fail", 0, "the chain could not be checked")
        text = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(outcome, "fail")
        return ArcResult(text, len(instances), "" if text != "fail" else str(reason))
