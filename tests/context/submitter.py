"""A process that submits trajectories and prints each acknowledgement (the kill -9 test's
child): `python -m tests.context.submitter URL BULLET_ID COUNT [process]`. With `process` it
learns in a learner process of its own and prints that process's id first."""

from __future__ import annotations

import sys

from trifecta.context.facade import ContextService
from trifecta.context.learner_process import LearnerProcess
from trifecta.context.settings import ContextSettings
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.embeddings import get_embedder


def trajectory(i: int, bullet_id: str) -> Trajectory:
    return Trajectory(
        id=f"traj-kill-{i:05d}",
        capsule_id="twin-a",
        prompt=f"t={i},p={i % 7},r={(3 * i) % 11};t+p?",
        answer=str(i + i % 7),
        outcome="success" if i % 3 else "failure",
        judge="verifier",
        task_kind="lookup_add",
        steps=[TrajectoryStep(layer="edge", tier="node-1", mean_entropy=0.1 + i / 1000)],
        bullet_ids=[bullet_id],
    )


def main() -> None:
    url, bullet_id, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if sys.argv[4:] == ["process"]:
        service = ContextService(
            control_url=url, settings=ContextSettings(learning_process=True), redis_url=""
        )
        assert isinstance(service.learner, LearnerProcess)
        service.start_learning()
        assert service.drain(timeout=300)  # the learner is up
        print(f"learner {service.learner.pid}", flush=True)
    else:
        service = ContextService(control_url=url, embedder=get_embedder())
    service.warm_up()
    print("ready", flush=True)
    for i in range(count):
        ticket = service.submit(trajectory(i, bullet_id))
        print(f"ack {ticket.trajectory_id}", flush=True)
    service.drain(timeout=600)
    print("drained", flush=True)


if __name__ == "__main__":
    main()
