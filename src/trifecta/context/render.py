"""Ranking bullets and rendering a playbook (and memories) into prompt text within a budget.

Most useful first: a bullet's rank key is its Laplace-smoothed helpful share, plus, when a
query is given, its cosine relevance to the query (which then dominates). The prompt keeps
the highest-ranked bullets that fit, grouped under their sections as ACE lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trifecta.context.models import Bullet, BulletStatus, MemoryHit, MemoryItem, RankedBullet
from trifecta.context.sql import Vector
from trifecta.context.tokens import count_joined, count_tokens, splits_at_whitespace

# How much usefulness moves a bullet relative to its relevance when a query is given.
USEFULNESS_WEIGHT = 0.5
PLAYBOOK_HEADER = "PLAYBOOK (cite bullet ids you use)"
MEMORY_HEADER = "MEMORIES (past outcomes in this domain)"


def rank_bullets(
    bullets: Sequence[Bullet],
    *,
    query: Vector | None = None,
    vectors: Mapping[str, Vector | None] | None = None,
) -> list[RankedBullet]:
    ranked = []
    for bullet in bullets:
        if bullet.status != BulletStatus.ACTIVE:
            continue
        vector = vectors.get(bullet.id) if vectors is not None else None
        relevance = float(vector @ query) if query is not None and vector is not None else None
        score = (
            bullet.usefulness
            if relevance is None
            else relevance + USEFULNESS_WEIGHT * (bullet.usefulness - 0.5)
        )
        ranked.append(RankedBullet(bullet=bullet, score=score, relevance=relevance))
    ranked.sort(key=lambda r: (-r.score, -r.bullet.helpful, r.bullet.id))
    return ranked


def _bullet_parts(bullet: Bullet) -> list[str]:
    # Its line's words: the counters' few values recur across bullets and batches.
    h, x = bullet.helpful, bullet.harmful
    return [f"[{bullet.id}]", "(helpful", f"{h},", "harmful", f"{x})", bullet.content]


def bullet_line(bullet: Bullet) -> str:
    return " ".join(_bullet_parts(bullet))


def bullet_tokens(bullet: Bullet) -> int:
    """`count_tokens(bullet_line(bullet))`, from its words' remembered counts: the counters
    change with every learned batch that tags the bullet, so its line was new text each
    time (a tokenizer call, about 80 us, on the request path), while the id, each counter's
    value and the content recur."""
    return count_joined(_bullet_parts(bullet), " ")


def memory_line(hit: MemoryHit) -> str:
    return memory_item_line(hit.memory)


def memory_item_line(m: MemoryItem) -> str:
    """A memory's line in a prompt. The learning worker counts the lines of the memories it
    writes (`learn_worker`), so the request that first renders one finds its count."""
    lesson = "worked" if m.outcome == "success" else "failed, avoid"
    detail = f" {m.description}." if m.description else ""
    content = " | ".join(line.strip() for line in m.content.splitlines() if line.strip())
    return f"- [{m.id}] ({lesson}) {m.title}.{detail} {content}"


def _compose(ranked: Sequence[RankedBullet]) -> tuple[str, int]:
    """The playbook prompt of these bullets and its tokens: from its lines' remembered
    counts (a bullet's from its parts', `bullet_tokens`), not by tokenizing the new prompt
    whole, where the tokenizer splits at whitespace (`count_joined`)."""
    sections: dict[str, list[Bullet]] = {}
    for r in ranked:
        sections.setdefault(r.bullet.section, []).append(r.bullet)
    parts = [PLAYBOOK_HEADER]
    for section, bullets in sections.items():
        parts.append(f"## {section}")
        parts.extend(bullet_line(b) for b in bullets)
    prompt = "\n".join(parts)
    if not splits_at_whitespace():
        return prompt, count_tokens(prompt)
    tokens = count_tokens(PLAYBOOK_HEADER) + sum(
        count_tokens(f"## {section}") + sum(bullet_tokens(b) for b in bullets)
        for section, bullets in sections.items()
    )
    return prompt, tokens


def render_bullets(
    ranked: Sequence[RankedBullet], token_budget: int
) -> tuple[str, int, list[RankedBullet]]:
    """(prompt, tokens, bullets kept): the best-ranked bullets whose text fits the budget."""
    if not ranked:
        return "", 0, []
    used = count_tokens(PLAYBOOK_HEADER)
    seen_sections: set[str] = set()
    kept: list[RankedBullet] = []
    for r in ranked:
        cost = bullet_tokens(r.bullet)
        if r.bullet.section not in seen_sections:
            cost += count_tokens(f"## {r.bullet.section}")
        if used + cost > token_budget:
            continue  # a shorter, lower-ranked bullet may still fit
        used += cost
        seen_sections.add(r.bullet.section)
        kept.append(r)
    if not kept:
        return "", 0, []
    prompt, tokens = _compose(kept)
    while kept and tokens > token_budget:  # a tokenizer whose joins split otherwise
        kept.pop()
        prompt, tokens = _compose(kept) if kept else ("", 0)
    return (prompt, tokens, kept) if kept else ("", 0, [])


def render_memories(
    hits: Sequence[MemoryHit], token_budget: int
) -> tuple[str, int, list[MemoryHit]]:
    lines, kept = [MEMORY_HEADER], []
    used = count_tokens(MEMORY_HEADER)
    for hit in hits:
        line = memory_line(hit)
        cost = count_tokens(line)
        if used + cost > token_budget:
            continue
        used += cost
        lines.append(line)
        kept.append(hit)
    if not kept:
        return "", 0, []
    return "\n".join(lines), count_joined(lines), kept


def render_context(
    ranked: Sequence[RankedBullet], hits: Sequence[MemoryHit], token_budget: int
) -> tuple[str, int, list[RankedBullet], list[MemoryHit]]:
    """Playbook and memories in one prompt: memories get up to a third of the budget, the
    playbook the rest."""
    memory_text, memory_tokens, kept_hits = render_memories(hits, token_budget // 3)
    bullet_text, bullet_tokens, kept_bullets = render_bullets(ranked, token_budget - memory_tokens)
    prompt = "\n\n".join(p for p in (bullet_text, memory_text) if p)
    tokens = (
        bullet_tokens + memory_tokens
        if splits_at_whitespace()  # no token spans the blank line between the two
        else count_tokens(prompt)
    )
    return prompt, tokens, kept_bullets, kept_hits
