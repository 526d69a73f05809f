"""Errors segqc raises for bad input, so a batch can report them and go on."""

__all__ = ["CaseError"]


class CaseError(ValueError):
    """A case that cannot be used: unreadable file, bad mask, geometry mismatch...

    The message always names the case and the reason, since it ends up in the
    results table and on stderr.
    """

    def __init__(self, case_id: str, reason: str):
        super().__init__(f"{case_id}: {reason}")
        self.case_id = case_id
        self.reason = reason
