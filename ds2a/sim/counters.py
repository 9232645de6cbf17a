"""What the simulator saw: the numbers tests and benchmarks assert on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Counters:
    logins: int = 0
    login_failures: int = 0
    auth_failures: int = 0  # 40002/40003 answers
    sessions_created: int = 0
    sessions_deleted: int = 0
    challenges_issued: int = 0
    pow_rejects: int = 0
    pow_reject_reasons: dict[str, int] = field(default_factory=dict)
    completions: int = 0  # generation streams started by chat/completion
    continues: int = 0  # generation streams started by chat/continue
    stops: int = 0  # chat/stop_stream calls
    finished: int = 0  # streams that ended FINISHED
    incomplete: int = 0  # streams that ended INCOMPLETE (stop, fault, directive)
    content_filtered: int = 0
    hints: int = 0  # refusals sent as a hint stream (rate limit, too long, busy)
    parallel_violations: int = 0  # a real second generation on a busy account
    muted_rejections: int = 0
    invalid_sessions: int = 0
    disconnects: int = 0  # client went away mid-stream
    drops: int = 0  # connections the simulator aborted on purpose (drop fault)
    faults_fired: int = 0
    frames_sent: int = 0  # SSE blocks written, keep-alive comments included
    active_streams: int = 0  # gauge
    max_active_streams: int = 0
    # Peak number of completion/continue requests in the streaming phase at once on one
    # account, refused ones included: >1 means a client broke the one-at-a-time rule.
    max_active_per_account: int = 0
    # drift of 2026-08..10 (§16)
    waf_blocks: int = 0  # requests the CDN/WAF refused (any endpoint)
    client_too_old: int = 0  # 40005 answers
    login_banned: int = 0  # logins answered biz_code 10
    login_device_refused: int = 0  # logins answered biz_code 11
    muted_logins: int = 0  # successful logins of a muted user
    toasts: int = 0  # error toasts sent
    error_statuses: dict[str, int] = field(default_factory=dict)  # CONTEXT_LENGTH_EXCEEDED, TIMEOUT endings
    user_stops: int = 0  # streams ended by a (simulated) user's stop: TIP + INCOMPLETE
    stalls: int = 0  # streams that went silent on purpose (stall)
    heartbeats: int = 0  # keep-alive comments sent because of the heartbeat promise
    endless_blocks: int = 0  # streams that began a block that never ends (endless_block)

    def snapshot(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def reject_pow(self, reason: str) -> None:
        self.pow_rejects += 1
        self.pow_reject_reasons[reason] = self.pow_reject_reasons.get(reason, 0) + 1

    def error_status(self, status: str) -> None:
        self.error_statuses[status] = self.error_statuses.get(status, 0) + 1

    def stream_opened(self) -> None:
        self.active_streams += 1
        if self.active_streams > self.max_active_streams:
            self.max_active_streams = self.active_streams

    def stream_closed(self) -> None:
        self.active_streams -= 1
