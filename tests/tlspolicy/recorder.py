"""The TLS-RPT results the tests read: every success and failure the policy code reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.tlspolicy.results import AppliedPolicy, Failure


@dataclass
class Recorded:
    successes: list[AppliedPolicy] = field(default_factory=list)
    failures: list[tuple[AppliedPolicy, Failure]] = field(default_factory=list)

    def success(self, policy: AppliedPolicy) -> None:
        self.successes.append(policy)

    def failure(self, policy: AppliedPolicy, failure: Failure) -> None:
        self.failures.append((policy, failure))

    def failure_types(self) -> list[str]:
        return [f.result_type for _, f in self.failures]
