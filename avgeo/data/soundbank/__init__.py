"""The MART sound bank: isolated sounds of AudioSet classes, procedural or from real clips.

`SoundBank.procedural()` renders over fifty classes from parametric generators grouped by family (`animals`,
`birds`, `bells`, `construction`, `human`, `nature`, `signals`, `vehicles`, built on `synthesis`);
`SoundBank.from_folder(root, labels_csv)` serves real AudioSet-style clips (`folder`).
"""

from avgeo.data.soundbank.bank import REFERENCE_RMS, SoundBank, procedural_generators
from avgeo.data.soundbank.errors import ClassNotInBankError, SoundBankError

__all__ = ["REFERENCE_RMS", "ClassNotInBankError", "SoundBank", "SoundBankError", "procedural_generators"]
