"""Rule queries: exact answers when the rules settle them, embedding mode with a confidence
when they depend on a learnable (incomplete) tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from trifecta.tensorlogic.program import ProgramError, compile_program, load_program
from trifecta.tensorlogic.service import RuleQuery, RuleService

PLANT = Path(__file__).resolve().parents[2] / "examples" / "tensorlogic" / "plant.tl"


def test_symbolic_answers_are_exact() -> None:
    service = RuleService(load_program(PLANT))
    yes = service.answer(RuleQuery(query="Downstream[v1, p3]?"))
    assert (yes.mode, yes.exact, yes.holds, yes.confidence) == ("symbolic", True, True, 1.0)
    assert service.answer(RuleQuery(query="Downstream[p3, v1]")).holds is False
    sees = service.answer(RuleQuery(query="Sees[s, filter]?"))
    assert [b.symbols["s"] for b in sees.answers] == ["press1", "turbidity", "level"]
    alarms = service.answer(RuleQuery(query="Alarm[s]?"))
    assert {b.symbols["s"] for b in alarms.answers} == {"flow1", "press1", "turbidity", "level"}


def test_a_query_on_learnable_facts_goes_to_embedding_mode_with_a_confidence() -> None:
    text = PLANT.read_text().replace(
        "tensor Watches[Sensor, Unit]      # the sensor is mounted on the unit",
        "tensor Watches[Sensor, Unit] learnable",
    )
    program = compile_program(text, base_dir=PLANT.parent)
    service = RuleService(program, embed_dim=16, temperature=0.1)
    answer = service.answer(RuleQuery(query="Alarm[flow1]?"))
    assert answer.mode == "embedding" and not answer.exact
    assert "Watches" in answer.reason
    assert answer.holds is True and 0.5 < answer.confidence < 1.0
    # a query that does not depend on the learnable tensor stays exact
    assert service.answer(RuleQuery(query="Downstream[v1, p3]?")).mode == "symbolic"


def test_bad_queries_name_the_problem() -> None:
    service = RuleService(load_program(PLANT))
    with pytest.raises(ProgramError, match=r"<query>:1:1: Downstream has 2 indices, not 1"):
        service.answer(RuleQuery(query="Downstream[v1]?"))
    with pytest.raises(ProgramError, match=r"<query>:1:16: expected an index or a symbol, found"):
        service.answer(RuleQuery(query="Downstream[v1, ]?"))
    with pytest.raises(ProgramError, match="unknown tensor 'Nope'"):
        service.answer(RuleQuery(query="Nope[x]?"))
    with pytest.raises(ValidationError):
        RuleQuery(query="R[a]", limit=0)
