"""Errors of the sound bank; each message names the input at fault and the fix."""


class SoundBankError(ValueError):
    """A bank that cannot be built or a clip that cannot be rendered (bad folder, labels, file, duration)."""


class ClassNotInBankError(KeyError):
    """A render was asked for a class this bank has no source for."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument; the message reads better plain.
        return str(self.args[0])
