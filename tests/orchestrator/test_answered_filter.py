"""The response cache's in-process filter: never a false "no", a fixed size whatever the traffic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trifecta.orchestrator.records import AnsweredFilter, prompt_hash

pairs = st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=40)), max_size=200)


@given(pairs)
def test_every_added_pair_is_found(added: list[tuple[str, str]]) -> None:
    answered = AnsweredFilter(bits=1 << 12)  # small, so collisions happen
    for capsule_id, prompt in added:
        answered.add(capsule_id, prompt_hash(prompt))
    assert all(answered.may_contain(c, prompt_hash(p)) for c, p in added)


def test_the_size_is_fixed_and_misses_mostly_answer_no() -> None:
    answered = AnsweredFilter(bits=1 << 16)
    before = len(answered._bits)
    for i in range(5_000):
        answered.add(f"cap-{i % 50}", prompt_hash(f"prompt {i}"))
    assert len(answered._bits) == before == (1 << 16) // 8
    # 5,000 pairs set at most 5,000 of 65,536 bits: about 7% of unseen pairs read "maybe".
    unseen = [answered.may_contain("cap-0", prompt_hash(f"other {i}")) for i in range(2_000)]
    assert sum(unseen) / len(unseen) < 0.12
    # Another capsule's prompt is a different pair.
    assert not all(answered.may_contain("cap-x", prompt_hash(f"prompt {i}")) for i in range(50))
