"""kill -9 at random moments while several clients flood the sidecar: the emulator (a separate
process, like Stigg) must end up with exactly the sum of every report that got a 202.

Accounting: each client sends, one request at a time, for its own customer in each cycle, so at
most one of its requests is "in doubt" when the process dies (sent, no answer: stored or not,
all or nothing). A keyed request in doubt is sent again after the restart (202 either way:
"accepted" or "duplicate") and so becomes known; an unkeyed one cannot be retried safely (that
is what keys are for), so that customer's usage must equal the known sum plus either nothing
or exactly that request's value.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.eventually import eventually_blocking
from tests.integration.usage_processes import (
    EmulatorProcess,
    SidecarProcess,
    emulator_process,
    sidecar_env,
)

pytestmark = pytest.mark.integration

CYCLES = 12
CLIENTS = 5
FEATURE = "feature-api-calls"


@dataclass
class Ledger:
    known: dict[str, float] = field(default_factory=dict)
    unkeyed_in_doubt: dict[str, float] = field(default_factory=dict)
    keyed_in_doubt: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    def add(self, customer: str, value: float) -> None:
        self.known[customer] = self.known.get(customer, 0.0) + value


def make_body(rng: random.Random, customer: str) -> tuple[dict[str, Any], bool, float]:
    """A random request: one report or a batch, with or without client keys."""
    keyed = rng.random() < 0.4
    count = 1 if rng.random() < 0.5 else rng.randint(2, 40)
    usages = []
    for _ in range(count):
        usage: dict[str, Any] = {
            "customerId": customer,
            "featureId": FEATURE,
            "value": rng.randint(1, 9),
        }
        if keyed:
            usage["idempotencyKey"] = f"crash-{uuid.uuid4()}"
        usages.append(usage)
    total = float(sum(u["value"] for u in usages))
    body: dict[str, Any] = usages[0] if count == 1 else {"usages": usages}
    return body, keyed, total


async def client(
    base: str, customer: str, ledger: Ledger, stop: asyncio.Event, rng: random.Random
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        while not stop.is_set():
            body, keyed, total = make_body(rng, customer)
            ledger.requests += 1
            try:
                response = await http.post("/v1/usage", json=body)
            except httpx.HTTPError:
                # The process died with this request in flight.
                if keyed:
                    ledger.keyed_in_doubt.append(body)
                else:
                    ledger.unkeyed_in_doubt[customer] = total
                return
            if response.status_code == 202:
                ledger.add(customer, total)
            else:
                assert response.status_code == 503, response.text  # nothing stored


async def flood_and_kill(sidecar: SidecarProcess, customers: list[str], ledger: Ledger) -> None:
    rng = random.Random()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(client(sidecar.base, c, ledger, stop, random.Random(rng.random())))
        for c in customers
    ]
    await asyncio.sleep(rng.uniform(0.2, 1.2))
    await asyncio.to_thread(sidecar.kill9)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


def resend_keyed(sidecar: SidecarProcess, ledger: Ledger) -> None:
    for body in ledger.keyed_in_doubt:
        response = sidecar.http.post("/v1/usage", json=body)
        assert response.status_code == 202, response.text
        usages = body.get("usages", [body])
        ledger.add(usages[0]["customerId"], float(sum(u["value"] for u in usages)))
    ledger.keyed_in_doubt.clear()


def check(emulator: EmulatorProcess, ledger: Ledger, customers: list[str]) -> None:
    mismatches = []
    for customer in customers:
        delivered = emulator.usage(customer)
        extra = delivered - ledger.known.get(customer, 0.0)
        allowed = {0.0, ledger.unkeyed_in_doubt.get(customer, 0.0)}
        if extra not in allowed:
            mismatches.append((customer, delivered, ledger.known.get(customer), allowed))
    assert not mismatches, mismatches
    counters = emulator.counters()
    assert max(counters["bulkSizes"]) <= 100
    # Shown with -s: how much of the interesting ground the random kills covered.
    print(
        f"\ncrash cycles: {ledger.requests} requests, {sum(ledger.known.values()):.0f} units"
        f" known, {len(ledger.unkeyed_in_doubt)} unkeyed requests in doubt,"
        f" {len(counters['bulkSizes'])} bulk calls, {counters['duplicateKeys']} keys resent"
    )


def run_crash_cycles(emulator: EmulatorProcess, env: dict[str, str], prefix: str) -> None:
    customers_by_cycle = [[f"{prefix}-{i}-{c}" for c in range(CLIENTS)] for i in range(CYCLES)]
    customers = [c for cycle in customers_by_cycle for c in cycle]
    for customer in customers:
        emulator.provision(customer)
    # Slow Stigg down a little, so kills also land between sending a batch and its ack.
    emulator.admin(
        "POST", "/admin/faults", json={"latencyMs": 15, "operations": ["reportUsageBulk"]}
    )
    ledger = Ledger()
    for cycle in customers_by_cycle:
        sidecar = SidecarProcess(env)
        resend_keyed(sidecar, ledger)
        asyncio.run(flood_and_kill(sidecar, cycle, ledger))
    emulator.admin("DELETE", "/admin/faults")
    final = SidecarProcess(env)
    try:
        resend_keyed(final, ledger)
        eventually_blocking(final.drained, 60, "the spool did not drain after the last restart")
        eventually_blocking(lambda: final.stats()["usage"]["accepted"] >= 0, 1, "stats")
    finally:
        assert final.terminate() == 0
    assert sum(ledger.known.values()) > 0
    assert ledger.requests > CYCLES * CLIENTS
    check(emulator, ledger, customers)


def test_kill_9_cycles_with_the_sqlite_spool(tmp_path: Path) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="0.05",
            SIDECAR_USAGE_CALLS_PER_MINUTE="6000",
        )
        run_crash_cycles(emulator, env, "sqlite")


def test_kill_9_cycles_with_the_redis_spool(tmp_path: Path, redis_server: str) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(
            emulator,
            tmp_path / "data",
            SIDECAR_REDIS_URL=redis_server,
            SIDECAR_CACHE_ENVIRONMENT=f"crash-{uuid.uuid4().hex[:8]}",
            SIDECAR_USAGE_CLAIM_IDLE_SECONDS="0.5",
            SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="0.05",
            SIDECAR_USAGE_CALLS_PER_MINUTE="6000",
        )
        run_crash_cycles(emulator, env, "redis")


def test_kill_9_between_send_and_ack_resends_the_same_keys(tmp_path: Path) -> None:
    with emulator_process() as emulator:
        env = sidecar_env(emulator, tmp_path / "data", SIDECAR_USAGE_FLUSH_INTERVAL_SECONDS="0.05")
        emulator.admin(
            "POST", "/admin/faults", json={"hang": True, "operations": ["reportUsageBulk"]}
        )
        sidecar = SidecarProcess(env)
        unkeyed = [{"customerId": "customer-demo", "featureId": FEATURE, "value": 2}] * 30
        keyed = [{**unkeyed[0], "idempotencyKey": f"send-ack-{n}"} for n in range(5)]
        response = sidecar.http.post("/v1/usage", json={"usages": unkeyed + keyed})
        assert response.status_code == 202
        eventually_blocking(
            lambda: emulator.counters()["faultedRequests"] >= 1, 10, "no batch was sent"
        )
        sidecar.kill9()
        # Stigg received the batch; the sidecar died before it could record the answer.
        emulator.admin("DELETE", "/admin/faults")
        eventually_blocking(
            lambda: emulator.usage("customer-demo") == 1200 + 70, 10, "hung call applied"
        )
        restarted = SidecarProcess(env)
        try:
            eventually_blocking(restarted.drained, 30, "not drained")
            assert restarted.stats()["usage"]["delivered"] == 35
        finally:
            assert restarted.terminate() == 0
        counters = emulator.counters()
        # The resend repeated every key (coalesced ones included): all counted once.
        assert counters["duplicateKeys"] == 6
        assert emulator.usage("customer-demo") == 1200 + 70
