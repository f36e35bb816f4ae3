"""What a conversion did and what it left: one finding per place, with the line and the manual fix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One place in the script.

    ``converted`` is True for a rewrite the tool made (listed so the diff can be reviewed against it)
    and False for a place left as written, where ``fix`` says what to change by hand.
    """

    line: int
    code: str
    reason: str
    fix: str = ""
    converted: bool = False

    def text(self) -> str:
        head = f"line {self.line}: {'converted' if self.converted else 'left as is'}: {self.code}"
        lines = [head, f"    why: {self.reason}"]
        if self.fix:
            lines.append(f"    {'note' if self.converted else 'manual change'}: {self.fix}")
        return "\n".join(lines)


@dataclass
class Report:
    """Every finding of one conversion, in line order."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def converted(self) -> list[Finding]:
        return sorted((f for f in self.findings if f.converted), key=lambda f: f.line)

    @property
    def unconverted(self) -> list[Finding]:
        """The places the user must look at: what ``fabric port --check`` fails on."""
        return sorted((f for f in self.findings if not f.converted), key=lambda f: f.line)

    def text(self) -> str:
        parts = [f"converted {len(self.converted)} place(s); left {len(self.unconverted)} for you to change"]
        if self.unconverted:
            parts.append("\nLEFT AS IS (change by hand):")
            parts.extend(f.text() for f in self.unconverted)
        if self.converted:
            parts.append("\nCONVERTED (review the diff):")
            parts.extend(f.text() for f in self.converted)
        return "\n".join(parts)
