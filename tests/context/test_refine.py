"""Grow-and-refine: de-duplication by embedding, pruning by counters, the token-budget cap,
and rendering within a budget, most useful first."""

from __future__ import annotations

from tests.context.conftest import ServiceFactory
from trifecta.context.deltas import AddOp, Delta, TagOp, UpdateOp
from trifecta.context.merge import bullet_id_for
from trifecta.context.models import BulletStatus, RenderRequest
from trifecta.context.settings import ContextSettings
from trifecta.context.tokens import count_tokens


def add(op_id: str, content: str, section: str = "strategies") -> AddOp:
    return AddOp(op_id=op_id, section=section, content=content)


def test_near_duplicates_merge_into_the_smallest_id_with_counters(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    first = add(
        "a1", "For lookup tasks, read the named sensor's value directly from the telemetry."
    )
    service.apply_delta("twin-a", Delta(ops=[first]))
    first_id = bullet_id_for("strategies", "a1")
    service.apply_delta(
        "twin-a", Delta(ops=[TagOp(op_id="t1", bullet_id=first_id, tag="helpful", count=3)])
    )

    dup = add("a2", "For lookup tasks read the named sensor value directly from telemetry.")
    other = add("a3", "Escalate to the large model tier when token entropy is high.")
    result = service.apply_delta("twin-a", Delta(ops=[dup, other]))

    dup_id, other_id = bullet_id_for("strategies", "a2"), bullet_id_for("strategies", "a3")
    survivor, loser = min(first_id, dup_id), max(first_id, dup_id)
    assert result.merged == {loser: survivor}
    bullets = {b.id: b for b in service.playbook("twin-a").bullets}
    assert set(bullets) == {survivor, other_id}
    assert bullets[survivor].helpful == 3
    # A later tag aimed at the merged-away id lands on the survivor.
    service.apply_delta("twin-a", Delta(ops=[TagOp(op_id="t2", bullet_id=loser, tag="helpful")]))
    assert {b.id: b.helpful for b in service.playbook("twin-a").bullets}[survivor] == 4


def test_same_text_in_another_section_is_kept(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    text = "Check every sensor named in the expression appears in the telemetry."
    result = service.apply_delta(
        "twin-a", Delta(ops=[add("c1", text, "checks"), add("c2", text, "pitfalls")])
    )
    assert result.merged == {} and len(service.playbook("twin-a").bullets) == 2


def test_harmful_bullets_are_pruned_and_return_when_counters_recover(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url, settings=ContextSettings(prune_margin=3, tenancy_ttl_s=0))
    service.apply_delta("twin-a", Delta(ops=[add("p1", "Always answer zero for chains.")]))
    bullet = bullet_id_for("strategies", "p1")
    result = service.apply_delta(
        "twin-a", Delta(ops=[TagOp(op_id="h1", bullet_id=bullet, tag="harmful", count=3)])
    )
    assert result.bullets[0].status == BulletStatus.PRUNED
    assert service.playbook("twin-a").bullets == []
    assert service.render("twin-a").prompt == ""
    service.apply_delta("twin-a", Delta(ops=[TagOp(op_id="g1", bullet_id=bullet, tag="helpful")]))
    assert [b.id for b in service.playbook("twin-a").bullets] == [bullet]


def test_playbook_is_capped_by_its_token_budget_least_useful_first(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    texts = [
        "Read sensor values from the telemetry list before any arithmetic is attempted on them.",
        "Minus signs bind only to the single term that follows them in three-term chains "
        "of operands.",
        "Route light lookup prompts to edge nodes that report a healthy status in the mesh.",
        "Record the verifier expected answer whenever a mismatch is reported for a task prompt.",
    ]
    cap = 64
    sizes = [count_tokens(t) for t in texts]
    assert sum(sizes[:3]) <= cap < sum(sizes)  # three fit, four do not
    service = make_service(
        sqlite_url, settings=ContextSettings(playbook_token_budget=cap, tenancy_ttl_s=0)
    )
    ids = [bullet_id_for("strategies", f"b{i}") for i in range(4)]
    service.apply_delta("twin-a", Delta(ops=[add(f"b{i}", texts[i]) for i in range(3)]))
    service.apply_delta(
        "twin-a",
        Delta(
            ops=[
                TagOp(op_id="u0", bullet_id=ids[0], tag="helpful", count=5),
                TagOp(op_id="u1", bullet_id=ids[1], tag="harmful", count=1),
                TagOp(op_id="u2", bullet_id=ids[2], tag="helpful", count=2),
            ]
        ),
    )
    result = service.apply_delta("twin-a", Delta(ops=[add("b3", texts[3])]))
    # The one bullet with more harmful than helpful tags goes; the new, untried one stays.
    assert result.evicted == [ids[1]]
    view = service.playbook("twin-a")
    assert {b.id for b in view.bullets} == {ids[0], ids[2], ids[3]}
    assert view.total_tokens <= cap


def test_render_keeps_the_most_useful_bullets_within_the_budget(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    texts = {
        "r0": "Read the named sensor from the telemetry list.",
        "r1": "Apply minus signs only to the next term in a chain.",
        "r2": "Prefer edge nodes for light lookups when they are healthy.",
        "r3": "Write the bare integer as the answer.",
    }
    service.apply_delta("twin-a", Delta(ops=[add(k, v) for k, v in texts.items()]))
    ids = {k: bullet_id_for("strategies", k) for k in texts}
    service.apply_delta(
        "twin-a",
        Delta(
            ops=[
                TagOp(op_id="x2", bullet_id=ids["r2"], tag="helpful", count=9),
                TagOp(op_id="x0", bullet_id=ids["r0"], tag="helpful", count=4),
                TagOp(op_id="x3", bullet_id=ids["r3"], tag="harmful", count=2),
            ]
        ),
    )
    full = service.render("twin-a", RenderRequest(token_budget=10_000))
    assert [r.bullet.id for r in full.bullets] == [ids["r2"], ids["r0"], ids["r1"], ids["r3"]]
    assert full.omitted == 0 and full.tokens == count_tokens(full.prompt)

    budget = full.tokens - 12  # too small for all four
    small = service.render("twin-a", RenderRequest(token_budget=budget))
    assert small.tokens <= budget and small.omitted >= 1
    assert small.bullets[0].bullet.id == ids["r2"]
    assert ids["r3"] not in {r.bullet.id for r in small.bullets}

    # With a query, relevance leads: the minus-sign bullet ranks first for a chain question.
    ranked = service.render(
        "twin-a",
        RenderRequest(token_budget=10_000, query="how do I handle subtraction in 41+17-23?"),
    )
    assert ranked.bullets[0].bullet.id == ids["r1"]


def test_update_changes_content_and_re_embeds(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    service.apply_delta("twin-a", Delta(ops=[add("u1", "Answer quickly.")]))
    bullet = bullet_id_for("strategies", "u1")
    service.apply_delta(
        "twin-a",
        Delta(
            ops=[UpdateOp(op_id="u2", bullet_id=bullet, content="Subtract the third operand last.")]
        ),
    )
    ranked = service.render("twin-a", RenderRequest(query="subtraction order"))
    assert ranked.bullets[0].bullet.content == "Subtract the third operand last."
    assert ranked.bullets[0].relevance is not None and ranked.bullets[0].relevance > 0.3
