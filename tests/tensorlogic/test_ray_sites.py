"""Federated training with Ray as the transport: a two-node Ray cluster whose head and worker
each run in a network namespace of the test's own (the generative layer's Ray test's helpers,
imported from there), one partition per node offered as a custom resource, one actor per
partition pinned to its node. The result equals the in-process federation's, and each
partition's facts and examples are found in its own node's actor only.

Run as a script (`python tests/tensorlogic/test_ray_sites.py ADDRESS WORKDIR OUT`) it is the
driver that the test starts inside the head's namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.generative.test_ray_experts import RAY_ENV, _ray_start, two_namespaces
from tests.tensorlogic.test_learning import N_X, N_Y, PROGRAM, planted
from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.tensorlogic.federated import FedAvg, Federation, FitRes
from trifecta.tensorlogic.learn import Params, initial_params
from trifecta.tensorlogic.program import load_program
from trifecta.tensorlogic.ray_sites import RayPartition, data_digests, ray_federation

__all__ = ["two_namespaces"]  # the fixture, imported for pytest
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]  # the driver imports this module's helpers from the repository
SITES = 2
ROUNDS, LOCAL_STEPS, LR = 6, 2, 0.5


def write_sites(workdir: Path) -> tuple[Path, list[Path]]:
    """The program and one directory per site: site i holds the rows x with x % SITES == i of
    both the facts A[x, .] and the examples Q[x, .] (each example's prediction depends on its
    own row of A only, so the federated gradient is the central one)."""
    a, _, q = planted()
    path = workdir / "program.tl"
    path.write_text(PROGRAM + 'facts A from "a.csv"\nexamples Q from "q.csv"\n')
    sites = []
    for i in range(SITES):
        site = workdir / f"site{i}"
        site.mkdir()
        rows = range(i, N_X, SITES)
        (site / "a.csv").write_text(
            "".join(f"{x},{y}\n" for x in rows for y in np.flatnonzero(a[x]))
        )
        (site / "q.csv").write_text(
            "".join(f"{x},{z},{q[x, z]}\n" for x in rows for z in range(N_Y))
        )
        sites.append(site)
    return path, sites


class RecordingFedAvg(FedAvg):
    """The aggregator as the receiving side sees it: the type of everything handed to it."""

    def __init__(self, initial: Params):
        super().__init__(initial, local_steps=LOCAL_STEPS, lr=LR)
        self.received: list[str] = []

    def aggregate_fit(
        self, server_round: int, results: list[FitRes], failures: list[BaseException]
    ) -> Params:
        self.received += [type(r).__name__ for r in results] + [repr(f) for f in failures]
        return super().aggregate_fit(server_round, results, failures)


def drive(address: str, workdir: Path) -> dict[str, object]:
    """In the head's namespace: the federation on Ray, what every actor holds and where."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    path, sites = workdir / "program.tl", sorted(workdir.glob("site*"))
    try:
        ray_federation(path, [RayPartition(resource="tl-site-nowhere", facts_dir=sites[0])])
        refused = ""
    except Unavailable as exc:
        refused = str(exc)
    partitions = [RayPartition(resource=f"tl-site-{i}", facts_dir=s) for i, s in enumerate(sites)]
    with ray_federation(path, partitions) as federation:
        strategy = RecordingFedAvg(initial_params(federation.server_view, 0))
        result = federation.fit(rounds=ROUNDS, strategy=strategy)
        reports = [site.report().model_dump() for site in federation.sites]  # type: ignore[attr-defined]
        server_holds = len(federation.server_view.facts) + len(federation.server_view.examples)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    return {
        "params": {k: v.tolist() for k, v in result.params.items()},
        "losses": result.losses,
        "reports": reports,
        "nodes": nodes,
        "received": strategy.received,
        "server_holds": server_holds,
        "refused": refused,
        "driver_ip": ray.util.get_node_ip_address(),
    }


def test_a_ray_partition_is_resource_equals_directory() -> None:
    part = RayPartition.parse("tl-site-a=/data/site-a")
    assert part.resource == "tl-site-a" and part.facts_dir == Path("/data/site-a")
    for bad in ("/data/site-a", "=/data", "site a=/data"):
        with pytest.raises(InvalidInput):
            RayPartition.parse(bad)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.timeout(600)
def test_ray_sites_on_two_nodes_equal_the_in_process_federation(
    two_namespaces: tuple[str, str, str, str], tmp_path: Path
) -> None:
    head_ns, worker_ns, head_ip, worker_ip = two_namespaces
    path, sites = write_sites(tmp_path)
    temp = tempfile.mkdtemp(prefix="trt", dir="/tmp")  # short: Ray's socket paths must fit
    try:
        _ray_start(head_ns, temp, "--head", f"--node-ip-address={head_ip}", "--port=6379",
                   "--include-dashboard=false", '--resources={"tl-site-0": 1}')  # fmt: skip
        _ray_start(worker_ns, temp, f"--address={head_ip}:6379",
                   f"--node-ip-address={worker_ip}", '--resources={"tl-site-1": 1}')  # fmt: skip
        out = tmp_path / "report.json"
        driver = [sys.executable, str(HERE), f"{head_ip}:6379", str(tmp_path), str(out)]
        subprocess.run(
            ["ip", "netns", "exec", head_ns, *driver],
            check=True,
            timeout=300,
            env={**RAY_ENV, "PYTHONPATH": str(ROOT)},
        )
        remote = json.loads(out.read_text())
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    with Federation(path, sites) as local_federation:
        local = local_federation.fit(rounds=ROUNDS, local_steps=LOCAL_STEPS, lr=LR, seed=0)
    assert np.allclose(remote["params"]["R"], local.params["R"], rtol=0, atol=1e-9)
    assert np.allclose(remote["losses"], local.losses, rtol=0, atol=1e-9)
    assert remote["losses"][-1] < remote["losses"][0]
    assert remote["received"] == ["FitRes"] * (SITES * ROUNDS)  # parameters, never data
    assert remote["server_holds"] == 0
    assert "no Ray node offers the resource 'tl-site-nowhere'" in remote["refused"]

    # the receiving side: what each actor holds in memory, and on which node it runs
    reports = {r["resource"]: r for r in remote["reports"]}
    assert {reports[f"tl-site-{i}"]["node_ip"] for i in range(SITES)} == {head_ip, worker_ip}
    assert reports["tl-site-0"]["node_ip"] == head_ip
    assert reports["tl-site-1"]["node_ip"] == worker_ip
    for i, site in enumerate(sites):
        assert (
            remote["nodes"][reports[f"tl-site-{i}"]["node_id"]]
            == reports[f"tl-site-{i}"]["node_ip"]
        )
        own = load_program(path, facts_dir=site)
        facts, examples = data_digests(own, "facts")[0], data_digests(own, "examples")[0]
        holders = [r["resource"] for r in remote["reports"] if r["facts"].get("A") == facts["A"]]
        assert holders == [f"tl-site-{i}"]
        holders = [r["resource"] for r in remote["reports"] if r["examples"]["Q"] == examples["Q"]]
        assert holders == [f"tl-site-{i}"]
        assert reports[f"tl-site-{i}"]["counts"]["examples:Q"] == len(range(i, N_X, SITES)) * N_Y


if __name__ == "__main__":  # the driver, inside the head's namespace
    Path(sys.argv[3]).write_text(json.dumps(drive(sys.argv[1], Path(sys.argv[2]))))
