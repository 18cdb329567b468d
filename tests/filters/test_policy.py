"""The policy (appliance/filters/policy.py): from Verdicts and Failures to one decision, pure, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.config.model import SpamPolicy
from appliance.filters.policy import SUMMARY, Decision, Failure, Outcome, decide, scanner_reply
from appliance.filters.scanner import Action, AddHeader, Verdict

HOST = "mx.test"
POLICY = SpamPolicy(add_header=5.0, quarantine=10.0, reject=15.0)


def _headers(decision: Decision) -> dict[str, str]:
    return dict(decision.headers)


def test_a_virus_is_refused_with_554_naming_the_signature() -> None:
    decision = decide([Verdict("clamav", virus="Win.Test.EICAR_HDB-1"), Verdict("spamassassin", score=1.0,
                                                                                   required=5.0)], POLICY, HOST)
    assert decision.outcome is Outcome.REFUSE
    assert decision.reply == "554 5.7.1 Message refused: virus Win.Test.EICAR_HDB-1 found"


def test_a_virus_goes_to_the_quarantine_when_the_config_says_so() -> None:
    decision = decide([Verdict("clamav", virus="Eicar")], POLICY, HOST, virus_action="quarantine")
    assert decision.outcome is Outcome.QUARANTINE
    assert decision.quarantine is not None and decision.quarantine["reason"] == "virus Eicar (clamav)"
    assert "clamav=virus (Eicar)" in decision.quarantine["summary"]


def test_score_thresholds_tag_quarantine_and_reject_on_the_highest_score() -> None:
    low = Verdict("spamassassin", score=1.0, required=5.0)
    for score, outcome, flag in ((2.0, Outcome.DELIVER, "NO"), (6.0, Outcome.DELIVER, "YES"),
                                 (12.0, Outcome.QUARANTINE, "YES"), (1000.0, Outcome.REFUSE, None)):
        decision = decide([low, Verdict("rspamd", score=score, required=15.0, rules=("GTUBE",))], POLICY, HOST,
                          files_junk=True)
        assert decision.outcome is outcome, score
        if flag is not None:
            headers = _headers(decision)
            assert headers["X-Spam-Flag"] == flag
            assert headers["X-Spam-Score"] == f"{score:.1f}"
            assert headers["X-Spam-Status"].startswith(f"{'Yes' if flag == 'YES' else 'No'}, score={score:.1f} "
                                                       "required=5.0 tests=GTUBE")
            assert decision.folder == ("Junk" if flag == "YES" else None)
    assert decision.reply == "550 5.7.1 Message refused as spam (score 1000.0)"


def test_a_threshold_set_to_null_is_off() -> None:
    decision = decide([Verdict("spamassassin", score=1000.0, required=5.0)],
                      SpamPolicy(add_header=5.0, quarantine=None, reject=None), HOST)
    assert decision.outcome is Outcome.DELIVER and decision.spam
    assert decision.folder is None  # this host does not deliver into mailboxes


def test_a_scanner_that_failed_tempfails_unless_its_on_error_is_accept() -> None:
    failure = Failure("clamav", "127.0.0.1:3310: no answer within 5s")
    decision = decide([failure, Verdict("spamassassin", score=0.0, required=5.0)], POLICY, HOST)
    assert decision.outcome is Outcome.TEMPFAIL
    assert decision.reply == "451 4.7.1 Content scanner clamav unavailable, try again later"
    decision = decide([Failure("clamav", "connection refused", "accept")], POLICY, HOST)
    assert decision.outcome is Outcome.DELIVER
    assert _headers(decision)[SUMMARY] == "mx.test; clamav=skipped (error: connection refused)"


def test_a_refusal_outranks_a_scanner_that_is_down() -> None:
    decision = decide([Failure("spamassassin", "down"), Verdict("clamav", virus="Eicar")], POLICY, HOST)
    assert decision.outcome is Outcome.REFUSE


def test_the_scanners_own_actions_count_and_the_more_severe_wins() -> None:
    tagged = decide([Verdict("rspamd", score=1.0, action=Action.ADD_HEADER)], POLICY, HOST)
    assert tagged.outcome is Outcome.DELIVER and tagged.spam
    rewrite = decide([Verdict("rspamd", score=1.0, action=Action.REWRITE_SUBJECT, subject="*** SPAM *** hi")],
                     POLICY, HOST)
    assert rewrite.rewrite_subject and rewrite.subject == "*** SPAM *** hi" and rewrite.spam
    held = decide([Verdict("m", action=Action.QUARANTINE, detail="held by policy")], POLICY, HOST)
    assert held.outcome is Outcome.QUARANTINE
    grey = decide([Verdict("rspamd", score=1.0, action=Action.GREYLIST)], POLICY, HOST)
    assert grey.outcome is Outcome.TEMPFAIL and grey.reply is not None and grey.reply.startswith("451 4.7.1 ")
    rejected = decide([Verdict("m", action=Action.REJECT, reply="550 5.7.0 Go away\r\n550 second line"),
                       Verdict("rspamd", action=Action.SOFT_REJECT)], POLICY, HOST)
    assert rejected.outcome is Outcome.REFUSE and rejected.reply == "550 5.7.0 Go away"


def test_a_scanner_reply_is_used_only_when_it_is_a_reply_of_the_right_class() -> None:
    assert scanner_reply("451 try later", "4") == "451 4.7.1 try later"
    assert scanner_reply("250 ok", "5") is None
    assert scanner_reply("550 5.7.1 bad\x00\x1b[31m", "5") == "550 5.7.1 bad??[31m"
    assert scanner_reply("nonsense", "5") is None


def test_the_summary_names_every_scanner_in_order_in_printable_ascii() -> None:
    decision = decide([Verdict("clamav"), Verdict("spamassassin", score=1000.0, required=5.0, rules=("GTUBE",)),
                       Verdict("rspamd", skipped="larger than 52428800 bytes"),
                       Verdict("dkim", detail="pass; header.d=x.test\r\n(forged)")],
                      SpamPolicy(add_header=5.0, quarantine=None, reject=None), "mx.test")
    summary = _headers(decision)[SUMMARY]
    assert summary.replace("\n", " ") == (
        "mx.test; clamav=clean; spamassassin=spam score=1000.0; rspamd=skipped (larger than 52428800 bytes); "
        "dkim=clean (pass, header.d=x.test [forged])")
    assert all(len(line) <= 78 for line in summary.split("\n"))


def test_scanners_headers_are_kept_but_never_our_own_or_a_bad_name() -> None:
    decision = decide([Verdict("rspamd", score=1.0, headers=(("X-Rspamd-Server", "r1"), ("X-Spam-Flag", "NO"),
                                                             ("Bad Name", "x")))], POLICY, HOST)
    names = [name for name, _ in decision.headers]
    assert names.count("X-Spam-Flag") == 1 and "X-Rspamd-Server" in names and "Bad Name" not in names


def test_milter_changes_are_passed_on_in_scanner_order() -> None:
    decision = decide([Verdict("a", changes=(AddHeader("X-A", "1"),)), Verdict("b", changes=(AddHeader("X-B", "2"),))],
                      POLICY, HOST)
    assert decision.changes == (AddHeader("X-A", "1"), AddHeader("X-B", "2"))


# -- properties

_scores = st.floats(min_value=-100, max_value=2000, allow_nan=False)
_thresholds = st.none() | st.floats(min_value=-10, max_value=100, allow_nan=False)
_policies = st.builds(SpamPolicy, add_header=_thresholds, quarantine=_thresholds, reject=_thresholds)
_verdicts = st.builds(
    Verdict, scanner=st.sampled_from(["clamav", "spamd", "rspamd", "milter"]),
    virus=st.none() | st.text(max_size=20), score=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    required=st.none() | _scores, rules=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    action=st.sampled_from(Action), reply=st.none() | st.text(max_size=30), subject=st.none() | st.text(max_size=10),
    skipped=st.none() | st.text(max_size=20), detail=st.text(max_size=30))
_failures = st.builds(Failure, scanner=st.text(max_size=10), reason=st.text(max_size=30),
                      on_error=st.sampled_from(["tempfail", "accept"]))
_answers = st.lists(_verdicts | _failures, max_size=5)


@given(_policies, _scores, _scores)
def test_the_decision_never_gets_milder_as_the_score_rises(policy, a, b) -> None:
    low, high = sorted((a, b))
    rank = list(Outcome).index
    first = decide([Verdict("spamd", score=low)], policy, HOST)
    second = decide([Verdict("spamd", score=high)], policy, HOST)
    assert rank(first.outcome) <= rank(second.outcome)
    assert second.spam or not first.spam or second.outcome is Outcome.REFUSE


@given(_answers, _policies, st.sampled_from(["reject", "quarantine"]), st.booleans())
def test_any_mix_of_answers_gives_exactly_one_well_formed_outcome(answers, policy, virus_action, junk) -> None:
    decision = decide(answers, policy, HOST, virus_action=virus_action, files_junk=junk)
    if decision.outcome in (Outcome.REFUSE, Outcome.TEMPFAIL):
        assert decision.reply is not None and decision.headers == ()
        assert decision.reply[0] == ("5" if decision.outcome is Outcome.REFUSE else "4")
        assert decision.reply.isascii() and decision.reply.isprintable() and len(decision.reply) < 510
    else:
        assert decision.reply is None
        assert (decision.quarantine is not None) == (decision.outcome is Outcome.QUARANTINE)
        headers = _headers(decision)
        assert headers["X-Spam-Flag"] in ("YES", "NO")
        for name in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", SUMMARY):
            value = headers.get(name, "")
            assert value.isascii() and all(line.isprintable() for line in value.split("\n")), (name, value)
            assert "\r" not in value


def test_a_verdict_that_did_not_see_everything_never_reads_clean() -> None:
    decision = decide([Verdict("clamav", skipped="Heuristics.Limits.Exceeded.MaxScanSize")], POLICY, HOST)
    assert _headers(decision)[SUMMARY] == "mx.test; clamav=skipped (Heuristics.Limits.Exceeded.MaxScanSize)"
    assert scanner_reply("421 4.3.0 closing", "4") is None
