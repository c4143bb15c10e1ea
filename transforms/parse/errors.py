"""The one exception of parsing: a record that becomes a dead letter.

Decoders and validation raise ``Invalid``; the parser turns it into a
DeadLetter with the same stage, reason and detail (transforms/dead_letters.py
lists the reason codes). Nothing else is raised for bad input.
"""

from typing import Optional

from transforms import dead_letters as dl


class Invalid(Exception):
  """A record failed decoding or validation.

  Attributes:
    reason: the dead letter's reason code (``dl.MALFORMED``, ...).
    detail: what is wrong, for people.
    stage: ``dl.PARSE`` (the bytes) or ``dl.VALIDATE`` (the values).
    event_id: the record's event id when it could be read, else None.
  """

  def __init__(self, reason: str, detail: str, stage: str = dl.VALIDATE,
               event_id: Optional[str] = None):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail
    self.stage = stage
    self.event_id = event_id
