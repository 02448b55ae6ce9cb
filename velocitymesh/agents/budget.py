"""Budgets in dollars and tokens, enforced before spending.

A step's budget has its run's budget as parent (and that one the workflow's), so a
call is allowed only when its worst case fits what is left at *every* level. The worst
case is an upper bound of the prompt in tokens plus ``max_tokens``, so a budget is never
overspent whatever the model answers. The worst case is *held* while the call is in
flight — two steps of one run calling at once cannot both spend the same remainder —
and replaced by the actual usage from the provider's response when it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from velocitymesh.errors import BudgetExceeded


@dataclass
class Budget:
    usd: float | None = None
    tokens: int | None = None
    label: str = "step"
    parent: Budget | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    held_usd: float = 0.0
    held_tokens: int = 0

    def child(self, usd: float | None = None, tokens: int | None = None, label: str = "step") -> Budget:
        return Budget(usd=usd, tokens=tokens, label=label, parent=self)

    def chain(self) -> list[Budget]:
        chain: list[Budget] = []
        b: Budget | None = self
        while b is not None:
            chain.append(b)
            b = b.parent
        return chain

    def remaining_usd(self) -> float | None:
        left = [b.usd - b.spent_usd - b.held_usd for b in self.chain() if b.usd is not None]
        return min(left) if left else None

    def remaining_tokens(self) -> int | None:
        left = [b.tokens - b.spent_tokens - b.held_tokens for b in self.chain() if b.tokens is not None]
        return min(left) if left else None

    def check(self, worst_tokens: int, worst_usd: float) -> None:
        """Raise :class:`BudgetExceeded` unless the worst case fits every level's remainder."""
        for b in self.chain():
            if b.tokens is not None:
                left = b.tokens - b.spent_tokens - b.held_tokens
                if worst_tokens > left:
                    raise BudgetExceeded(
                        f"the next model call could use up to {worst_tokens} tokens but the {b.label} budget has "
                        f"{left} of {b.tokens} left; nothing was sent",
                        hint=f"raise budget.tokens of the {b.label}, lower max_tokens, or shorten the prompt",
                    )
            if b.usd is not None:
                left_usd = b.usd - b.spent_usd - b.held_usd
                if worst_usd > left_usd + 1e-12:
                    raise BudgetExceeded(
                        f"the next model call could cost up to ${worst_usd:.6f} but the {b.label} budget has "
                        f"${max(left_usd, 0):.6f} of ${b.usd:.6f} left; nothing was sent",
                        hint=f"raise budget.usd of the {b.label}, lower max_tokens, or use a cheaper model",
                    )

    @contextmanager
    def hold(self, worst_tokens: int, worst_usd: float) -> Iterator[Charge]:
        """Check, then hold the worst case until the block ends; ``charge.settle`` records the actual use."""
        self.check(worst_tokens, worst_usd)
        chain = self.chain()
        for b in chain:
            b.held_tokens += worst_tokens
            b.held_usd += worst_usd
        charge = Charge()
        try:
            yield charge
        finally:
            for b in chain:
                b.held_tokens -= worst_tokens
                b.held_usd -= worst_usd
                b.spent_tokens += charge.tokens
                b.spent_usd += charge.usd

    def charge(self, tokens: int, usd: float) -> None:
        for b in self.chain():
            b.spent_tokens += tokens
            b.spent_usd += usd


@dataclass
class Charge:
    tokens: int = 0
    usd: float = 0.0

    def settle(self, tokens: int, usd: float) -> None:
        self.tokens, self.usd = tokens, usd
