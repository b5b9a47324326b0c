"""Stand-in for the audit trail (issue 17), with the interface the audit helper's branch
implements; that branch replaces this file. record() records nothing here."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    kind: str  # "api_key" | "command" | "system"
    name: str = ""
    api_key_id: int | None = None

    @classmethod
    def from_request(cls, request) -> "Actor":
        key = getattr(request, "auth", None)
        return cls("api_key", getattr(key, "prefix", ""), getattr(key, "pk", None))

    @classmethod
    def command(cls, name: str) -> "Actor":
        return cls("command", name)

    @classmethod
    def system(cls, what: str) -> "Actor":
        return cls("system", what)


def record(*, org, actor: Actor, action: str, target_type: str, target_key: str = "", summary: dict | None = None) -> None:
    """Records one action of `actor` on the organization's data (here: nothing)."""
