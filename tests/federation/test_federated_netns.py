"""A federation across hosts: three environments (a cloud, a sovereign site reserved for sovereign
capsules, an EU edge site), each `trifecta env serve` in its own network namespace behind a veth
pair, and a front door in this process whose bridge reaches them over HTTP. A mixed workload
runs through the front door; the cloud is killed (SIGKILL) mid-run. Then, from each surviving
environment's own record: nothing was served where the placement rule forbids it, and what the
front door sent equals what the environments served; the front door's ledger equals its request
log; every request was answered or refused with a one-line reason."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from trifecta.core import db
from trifecta.core.errors import TrifectaError
from trifecta.core.settings import Settings
from trifecta.federation.http_client import HttpBridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import load_topology
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest, TaskResult
from trifecta.orchestrator.records import RequestLog
from trifecta.orchestrator.stack import Stack
from trifecta.orchestrator.workload import build_workload

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.netns]
ROOT = Path(__file__).resolve().parents[2]
PORT = 8100
CREDENTIAL = "netns-federation-credential"
ENVIRONMENTS = ("inference", "sovereign", "edge-eu")
TOPOLOGY = {
    "name": "netns",
    "environments": [
        {
            "name": "inference",
            "kind": "inference",
            "provider": "aws",
            "region": "us-east-1",
            "nodes": [{"name": "gpus", "accelerator": "a100-40gb", "count": 8}],
        },
        {
            "name": "sovereign",
            "kind": "sovereign",
            "provider": "on-prem",
            "region": "eu-central",
            "jurisdiction": "eu",
            "reserved_for": ["sovereign"],
            "nodes": [{"name": "gpus", "accelerator": "a100-80gb", "count": 4}],
        },
        {
            "name": "edge-eu",
            "kind": "edge",
            "provider": "mesh",
            "region": "eu-west",
            "jurisdiction": "eu",
            "nodes": [{"name": "npus", "accelerator": "coral-npu", "count": 20}],
        },
    ],
}
CAPSULES = [
    Capsule(id=f"nf-twin-{i}", name="t", kind="digital_twin", domain=f"nf-energy-{i % 2}")
    for i in range(4)
] + [
    Capsule(id=f"nf-gov-{i}", name="g", kind="sovereign", domain="nf-gov-eu", jurisdiction="eu")
    for i in range(2)
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[dict[str, tuple[str, str]]]:
    """environment -> (namespace, address): one namespace per environment, each joined to this
    (the front door's) namespace by a veth pair on a /30 of its own."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:5]
    third = random.Random(tag).randrange(0, 256)
    made: dict[str, tuple[str, str]] = {}
    try:
        for i, env in enumerate(ENVIRONMENTS):
            namespace, outer, inner = f"trif-fed-{tag}-{i}", f"tf{tag}{i}o", f"tf{tag}{i}i"
            near, far = f"10.210.{third}.{4 * i + 1}", f"10.210.{third}.{4 * i + 2}"
            _ip("netns", "add", namespace)
            made[env] = (namespace, far)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", namespace)
            _ip("addr", "add", f"{near}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", namespace, "addr", "add", f"{far}/30", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield made
    finally:
        for namespace, _ in made.values():  # deleting a namespace deletes its veth pair too
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)


def _start(
    env: str, namespace: str, address: str, data: Path, topology: Path
) -> subprocess.Popen[bytes]:
    log = (data / f"{env}.log").open("wb")
    return subprocess.Popen(
        [
            *("ip", "netns", "exec", namespace),
            *(sys.executable, "-m", "trifecta.cli", "env", "serve", "--env", env),
            *("--host", address, "--port", str(PORT), "--topology", str(topology)),
        ],
        cwd=ROOT,
        env=os.environ
        | {
            "TRIFECTA_DATA_DIR": str(data),
            "TRIFECTA_FEDERATION_CREDENTIAL": CREDENTIAL,
            "TRIFECTA_DATABASE_URL": f"sqlite:///{data / 'control.db'}",
            "TRIFECTA_PHASE": "pilot",  # the phase of multi-cloud federation
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            health = httpx.get(
                url + "/federation/v1/health",
                headers={"Authorization": f"Bearer {CREDENTIAL}"},
                timeout=2,
            )
            if health.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not start: {log.read_text()[-3000:]}")


def test_mixed_workload_across_namespaced_environments_with_one_killed(
    hosts: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(TOPOLOGY))
    topology = load_topology(topology_file)
    settings = Settings(
        data_dir=data, database_url=f"sqlite:///{data / 'control.db'}", phase="pilot"
    )
    # The front door registers the capsules before any environment looks one up.
    stack_capsules = list(CAPSULES)
    from trifecta.fleet.registry import CapsuleRegistry

    CapsuleRegistry(db.get_engine(settings.db_url)).add_many(stack_capsules, replace=True)
    processes = {
        env: _start(env, namespace, address, data, topology_file)
        for env, (namespace, address) in hosts.items()
    }
    urls = {env: f"http://{address}:{PORT}" for env, (_, address) in hosts.items()}
    stack: Stack | None = None
    try:
        for env, process in processes.items():
            _wait(urls[env], process, data / f"{env}.log")
        bridge = HttpBridge(topology, urls, credential=CREDENTIAL)
        stack = Stack(settings=settings, capsules=CAPSULES, topology=topology, remote=bridge)
        orchestrator = Orchestrator(stack.parts, run_id="netns")
        items = build_workload(CAPSULES, 48, seed=5)
        killed = threading.Event()
        results: list[TaskResult] = []
        refusals: list[str] = []

        def one(index: int) -> TaskResult | str:
            if index == len(items) // 3 and not killed.is_set():
                processes["inference"].send_signal(signal.SIGKILL)  # kill -9 mid-run
                processes["inference"].wait(timeout=30)
                killed.set()
            item = items[index]
            try:
                return orchestrator.serve(item.capsule_id, TaskRequest(prompt=item.task.prompt))
            except TrifectaError as exc:
                return exc.one_line()

        with ThreadPoolExecutor(max_workers=2) as pool:
            for outcome in pool.map(one, range(len(items))):
                if isinstance(outcome, str):
                    refusals.append(outcome)
                else:
                    results.append(outcome)
        assert killed.is_set()
        # every request answered, or refused with one clear line
        assert len(results) + len(refusals) == len(items) and results
        assert all(r and "\n" not in r for r in refusals)
        assert refusals  # twins' heavy tasks had nowhere else to go once the cloud was gone
        by_id = {c.id: c for c in CAPSULES}
        for result in results:
            capsule = by_id[result.capsule_id]
            assert result.environment is not None  # an answered request names where
            assert topology.environment(result.environment).admits(capsule)
            for hop in result.hops:
                assert topology.environment(hop.environment).admits(capsule), hop
        # from the survivors' own records: only admitted capsules, and the same hops the
        # front door counted as delivered
        sent = Counter((h.environment, h.service, h.method) for h in stack.bridge.hops if h.ok)
        for env in ("sovereign", "edge-eu"):
            served = bridge.served(env)
            place = topology.environment(env)
            assert all(place.admits(by_id[r.capsule_id]) and r.ok for r in served), served
            got = Counter((r.environment, r.service, r.method) for r in served)
            assert got == Counter({k: n for k, n in sent.items() if k[0] == env}), (env, got)
        assert any(r.environment == "sovereign" for r in results)
        assert {r.capsule_id for r in results if r.environment == "sovereign"} <= {
            c.id for c in CAPSULES if c.kind == "sovereign"
        }
        # the front door's ledger and request log agree
        log = RequestLog(stack.engine, stack.parts.ledger)
        assert log.count(run_id="netns") == len(results)
        ledger = sum(r.usd for r in stack.parts.ledger.rollup("layer", run_id="netns"))
        assert ledger == pytest.approx(log.usd(run_id="netns"))
    finally:
        if stack is not None:
            stack.close()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        db.dispose_engines()
